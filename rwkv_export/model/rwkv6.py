"""The RWKV-6 reference ("Finch", x060), ../shared/spec/RWKV6.md, in sequence and step forms.

Time mix per layer: d = prev - x; data-dependent token shift through the maa LoRA (five chunks in the
order w, k, v, r, g); r, k, v linear; a per-token decay w_raw = time_decay + LoRA(x_w), in float32;
WKV6 (custom_ops/wkv6.py, swappable as `self.wkv`) with key-major state S[h, i=k, j=v]; GroupNorm
(eps 64e-5); gate silu(G x_g). An optional `time_state` (value-major on disk) is the initial state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rwkv_export.model.base import Block, RWKVModel, WKVState
from rwkv_export.model.common import group_norm
from rwkv_export.model.state import HeadState, initial_state
from rwkv_export.ops.wkv6 import wkv6


class RWKV6(RWKVModel):
    """RWKV-6 language model; state `HeadState` with key-major wkv [L, B, H, N, N]."""

    WKV = staticmethod(wkv6)
    FP32_PARAMS = frozenset({"att_time_decay", "att_time_faaaa", "att_ln_x_weight", "att_ln_x_bias", "att_time_state"})

    def initial_state(self, batch: int) -> HeadState:
        state = initial_state(self.config, batch, self.state_dtype)
        assert isinstance(state, HeadState)
        for i, b in enumerate(self.blocks):
            if hasattr(b, "att_time_state"):  # value-major [H, N(v), N(k)] -> key-major
                state.wkv[i] = b.att_time_state.transpose(-1, -2)
        return state

    def _time_mix(
        self, i: int, b: Block, x: torch.Tensor, prev: torch.Tensor, wkv: WKVState, ctx: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, WKVState]:
        B, T, _ = x.shape
        H, N = self.n_head, self.head_size
        d = prev - x
        h = torch.tanh((x + d * b.att_time_maa_x) @ b.att_time_maa_w1).view(B, T, 5, -1)  # [B, T, 5, Dm]
        m = torch.einsum("btfd,fdc->btfc", h, b.att_time_maa_w2)  # [B, T, 5, C]: w, k, v, r, g
        xw, xk, xv, xr, xg = (
            x + d * (maa + m[:, :, f])
            for f, maa in enumerate((b.att_time_maa_w, b.att_time_maa_k, b.att_time_maa_v, b.att_time_maa_r, b.att_time_maa_g))
        )
        r = F.linear(xr, b.att_receptance_weight).to(self.state_dtype).view(B, T, H, N)
        k = F.linear(xk, b.att_key_weight).to(self.state_dtype).view(B, T, H, N)
        v = F.linear(xv, b.att_value_weight).to(self.state_dtype).view(B, T, H, N)
        g = F.silu(F.linear(xg, b.att_gate_weight))
        lora = torch.tanh(xw @ b.att_time_decay_w1) @ b.att_time_decay_w2
        w_raw = (b.att_time_decay + lora.to(self.state_dtype)).view(B, T, H, N)  # float32: exp overflows fp16
        y, s = self.wkv(r, k, v, w_raw, b.att_time_faaaa, *wkv)
        y = group_norm(y.reshape(B, T, H * N), H, b.att_ln_x_weight, b.att_ln_x_bias, self.eps).to(self.dtype)
        return F.linear(y * g, b.att_output_weight), (s,)

    def _ffn_inputs(self, b: Block, x: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = prev - x
        return x + d * b.ffn_time_maa_k, x + d * b.ffn_time_maa_r
