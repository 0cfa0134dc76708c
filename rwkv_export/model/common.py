"""Constants and small functions every RWKV reference shares: dtypes, LayerNorm eps, token shift and mix.

Dtypes: float64 (the oracle: everything float64), float32, float16 and bfloat16 for activations
(linear layers and norms in that dtype); WKV inputs, decays, GroupNorm and the state stay float32
(float64 in the oracle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LN_EPS = 1e-5  # every LayerNorm (ln0, ln1, ln2, ln_out) of every version
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the WKV and the state for activations in `dtype`: float64 in the oracle, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def shifted(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Token shift: x [B, T, C] -> the previous token's row for every t (prev [B, C] for t = 0)."""
    return torch.cat([prev.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)


def mix(x: torch.Tensor, prev: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The static token-shift interpolation of RWKV-4/5: x * m + prev * (1 - m)."""
    return x * m + prev * (1 - m)


def group_norm(y: torch.Tensor, n_head: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """ln_x: per head over its N channels (biased variance), then a per-channel affine. y [B, T, A]."""
    B, T, A = y.shape
    y = F.layer_norm(y.view(B, T, n_head, A // n_head), (A // n_head,), eps=eps).view(B, T, A)
    return y * weight + bias
