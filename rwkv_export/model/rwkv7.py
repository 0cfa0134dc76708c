"""The RWKV-7 reference ("Goose", x070), ../shared/spec/RWKV7.md, in sequence and step forms.

Time mix per layer: x_f = x + (prev - x) * x_f for f in r, w, k, v, a, g; decay
w_raw = -softplus(-(w0 + LoRA_tanh(x_w))) - 0.5 in float32 (w = exp(-e^-0.5 sigma(z)));
in-context rate a = sigma(a0 + LoRA(x_a)); kk = per-head L2-normalised k*k_k (float32);
k <- k*(1 + (a-1)*k_a); layer 0's v is v_first, later layers lerp towards it by sigma(v0 + LoRA(x_v));
WKV7 (custom_ops/wkv7.py, swappable as `self.wkv`) with a = -kk, b = kk*a and value-major state
S[h, i=v, j=k]; GroupNorm (eps 64e-5); bonus (sum_j r k r_k) v per head; output O (y * g).
No float16 residual rescale (x070 has none: the registry's float16_rescale_every is 0). Channel mix: Vf relu(Kf x_k)^2, no receptance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rwkv_export.model.base import Block, RWKVModel, WKVState
from rwkv_export.model.common import group_norm
from rwkv_export.ops.wkv7 import wkv7

L2_EPS = 1e-12  # torch.nn.functional.normalize's default, as in the rwkv package and BlinkDL's code


class RWKV7(RWKVModel):
    """RWKV-7 language model; state `HeadState` with value-major wkv [L, B, H, N, N]."""

    WKV = staticmethod(wkv7)
    FP32_PARAMS = frozenset({"att_w0", "att_k_k", "att_k_a", "att_r_k", "att_ln_x_weight", "att_ln_x_bias"})

    def _time_mix(
        self, i: int, b: Block, x: torch.Tensor, prev: torch.Tensor, wkv: WKVState, ctx: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, WKVState]:
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        f32 = self.state_dtype
        d = prev - x
        xr, xw, xk, xv, xa, xg = (x + d * m for m in (b.att_x_r, b.att_x_w, b.att_x_k, b.att_x_v, b.att_x_a, b.att_x_g))
        r = F.linear(xr, b.att_receptance_weight).to(f32)  # [B, T, C]
        k = F.linear(xk, b.att_key_weight).to(f32)
        v = F.linear(xv, b.att_value_weight).to(f32)
        z = b.att_w0 + (torch.tanh(xw @ b.att_w1) @ b.att_w2).to(f32)
        w_raw = -F.softplus(-z) - 0.5  # log(-log w): w = exp(-exp(w_raw)) in (0.5452, 1)
        a = torch.sigmoid(b.att_a0 + (xa @ b.att_a1) @ b.att_a2).to(f32)
        g = torch.sigmoid(xg @ b.att_g1) @ b.att_g2
        kk = F.normalize((k * b.att_k_k).view(B, T, H, N), dim=-1, p=2.0, eps=L2_EPS)  # float32 norm
        k = k * (1 + (a - 1) * b.att_k_a)
        if i == 0:
            ctx["v_first"] = v
        else:
            v = v + (ctx["v_first"] - v) * torch.sigmoid(b.att_v0 + (xv @ b.att_v1) @ b.att_v2).to(f32)
        a4 = a.view(B, T, H, N)
        y, s = self.wkv(r.view(B, T, H, N), w_raw.view(B, T, H, N), k.view(B, T, H, N), v.view(B, T, H, N), -kk, kk * a4, *wkv)
        y = group_norm(y.reshape(B, T, C), H, b.att_ln_x_weight, b.att_ln_x_bias, self.eps)
        bonus = (r * k * b.att_r_k.reshape(-1)).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N)
        y = (y + bonus.reshape(B, T, C)).to(self.dtype)
        return F.linear(y * g, b.att_output_weight), (s,)

    def _channel_mix(self, b: Block, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        k = torch.relu(F.linear(x + (prev - x) * b.ffn_x_k, b.ffn_key_weight)).to(self.state_dtype) ** 2
        return F.linear(k, b.ffn_value_weight.to(self.state_dtype)).to(self.dtype)
