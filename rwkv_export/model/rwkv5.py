"""The RWKV-5 reference (5.1 and 5.2, "Eagle"), ../shared/spec/RWKV5.md, in sequence and step forms.

Time mix per layer: x_f = x*mix_f + prev*(1-mix_f) for f in k, v, r (, g for 5.2); r, k, v linear;
WKV5 (custom_ops/wkv5.py, swappable as `self.wkv`) over heads with key-major state S[h, i=k, j=v];
GroupNorm (eps from the checkpoint: config.group_norm_eps); 5.2 gates with silu(G x_g).
5.1's per-head decay and bonus are broadcast to [H, N]; its bonus is exp(time_first) (or the
preview's time_faaaa, the bonus itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rwkv_export.model.base import Block, RWKVModel, WKVState
from rwkv_export.model.common import group_norm, mix
from rwkv_export.ops.wkv5 import wkv5


class RWKV5(RWKVModel):
    """RWKV-5.1 / 5.2 language model; state `HeadState` with key-major wkv [L, B, H, N, N].

    Derived buffers (what the WKV5 op takes): att_time_decay holds w_raw [H, N]; att_time_first (5.1)
    or att_time_faaaa holds the bonus u [H, N] itself (5.1's exp(time_first) applied at load).
    """

    WKV = staticmethod(wkv5)
    FP32_PARAMS = frozenset({"att_ln_x_weight", "att_ln_x_bias"})

    def prepare(self, name: str, t: torch.Tensor, layer: int) -> torch.Tensor:
        H, N = self.config.heads
        if name == "att_time_decay":  # -> w_raw [H, N]: w = exp(-exp(w_raw))
            return t.reshape(H, -1).expand(H, N).to(self.state_dtype)
        if name == "att_time_first":  # bonus u = exp(time_first)
            return torch.exp(t).reshape(H, -1).expand(H, N).to(self.state_dtype)
        if name == "att_time_faaaa":  # the bonus itself
            return t.reshape(H, -1).expand(H, N).to(self.state_dtype)
        return super().prepare(name, t, layer)

    def _time_mix(
        self, i: int, b: Block, x: torch.Tensor, prev: torch.Tensor, wkv: WKVState, ctx: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, WKVState]:
        B, T, _ = x.shape
        H, N = self.n_head, self.head_size
        r = F.linear(mix(x, prev, b.att_time_mix_r), b.att_receptance_weight).to(self.state_dtype)  # [B, T, A]
        k = F.linear(mix(x, prev, b.att_time_mix_k), b.att_key_weight).to(self.state_dtype)
        v = F.linear(mix(x, prev, b.att_time_mix_v), b.att_value_weight).to(self.state_dtype)
        u = b.att_time_faaaa if hasattr(b, "att_time_faaaa") else b.att_time_first
        y, s = self.wkv(r.view(B, T, H, N), k.view(B, T, H, N), v.view(B, T, H, N), b.att_time_decay, u, *wkv)
        y = group_norm(y.reshape(B, T, H * N), H, b.att_ln_x_weight, b.att_ln_x_bias, self.eps).to(self.dtype)
        if hasattr(b, "att_gate_weight"):  # 5.2
            y = y * F.silu(F.linear(mix(x, prev, b.att_time_mix_g), b.att_gate_weight))
        return F.linear(y, b.att_output_weight), (s,)

    def _ffn_inputs(self, b: Block, x: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mix(x, prev, b.ffn_time_mix_k), mix(x, prev, b.ffn_time_mix_r)
