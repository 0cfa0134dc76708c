"""rwkv::WKV5: schema and reference implementations (torch and numpy), ../shared/spec/RWKV5.md.

The op (domain ``rwkv``, version 1; custom_ops/registry.py holds its entry), per batch row b and head h, S[i=key][j=value] (key-major):

    inputs   r, k, v   [B, T, H, N] float32 (float16 allowed: cast to float32 inside)
             w_raw     [H, N]       float32  decay exponent: w = exp(-exp(w_raw)), one per key channel
             u         [H, N]       float32  bonus of the current token (5.1's per-head w, u broadcast)
             state_in  [B, H, N, N] float32  key-major
    outputs  y         [B, T, H, N] float32
             state_out [B, H, N, N] float32

Per token t:  y_j = sum_i r_i * (u_i * k_i * v_j + S_ij);   S_ij <- w_i * S_ij + k_i * v_j.
It equals rwkv::WKV6 with w_raw broadcast over (B, T) (custom_ops/wkv6.py); GroupNorm stays outside.
"""

from __future__ import annotations

import numpy as np
import torch

from rwkv_export.ops import wkv6
from rwkv_export.ops.wkv6 import _scan, wkv6_numpy

OP_TYPE = "WKV5"
INPUTS, OUTPUTS, STATE_LAYOUT = wkv6.INPUTS, wkv6.OUTPUTS, wkv6.STATE_LAYOUT  # WKV6's schema, w_raw [H, N]


def wkv5(
    r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w_raw: torch.Tensor, u: torch.Tensor, state_in: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op over a sequence, in the dtype of state_in; swapped for one `rwkv::WKV5` node at export."""
    dt = state_in.dtype
    w = torch.exp(-torch.exp(w_raw.to(dt)))  # [H, N], computed once
    return _scan(r.to(dt), k.to(dt), v.to(dt), w.expand_as(k), u.to(dt), state_in)


def wkv5_numpy(
    r: np.ndarray, k: np.ndarray, v: np.ndarray, w_raw: np.ndarray, u: np.ndarray, state_in: np.ndarray, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Reference WKV5 in numpy (float64 by default): WKV6's recurrence with a constant decay."""
    return wkv6_numpy(r, k, v, np.asarray(w_raw), u, state_in, dtype)
