"""rwkv::WKV7: schema and reference implementations (torch and numpy), ../shared/spec/RWKV7.md.

The op (domain ``rwkv``, version 1; custom_ops/registry.py holds its entry), the generalised delta rule, per batch row b and head h,
S[i=value][j=key] (value-major, the layout of the rwkv package, rwkv.cpp and BlinkDL's kernels):

    inputs   r, k, v, a, b [B, T, H, N] float32 (float16 allowed: cast to float32 inside)
             w_raw         [B, T, H, N] float32  decay exponent: w = exp(-exp(w_raw)) in (0.5452, 1)
             state_in      [B, H, N, N] float32  value-major
    outputs  y             [B, T, H, N] float32
             state_out     [B, H, N, N] float32

Per token t:  sa_i = sum_j S_ij a_j;  S_ij <- S_ij w_j + sa_i b_j + v_i k_j;  y_i = sum_j S_ij r_j
(y reads the updated S; no bonus). The model calls it with a = -kk and b = kk * a_gate.
"""

from __future__ import annotations

import numpy as np
import torch

OP_TYPE = "WKV7"
INPUTS = ("r", "w_raw", "k", "v", "a", "b", "state_in")
OUTPUTS = ("y", "state_out")
STATE_LAYOUT = "value-major [B, H, N(value), N(key)]"


def wkv7(
    r: torch.Tensor,
    w_raw: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    state_in: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op over a sequence (the sequential scan that defines it), in the dtype of state_in.

    This is the function the exporter will swap for one `rwkv::WKV7` node: its signature is the op's.
    """
    dt = state_in.dtype
    r, k, v, a, b = (t.to(dt) for t in (r, k, v, a, b))
    w = torch.exp(-torch.exp(w_raw.to(dt)))  # [B, T, H, N]
    state = state_in
    ys = []
    for t in range(k.shape[1]):
        sa = state @ a[:, t].unsqueeze(-1)  # [B, H, N, 1]: sum_j S_ij a_j
        state = state * w[:, t].unsqueeze(-2) + sa * b[:, t].unsqueeze(-2) + v[:, t].unsqueeze(-1) * k[:, t].unsqueeze(-2)
        ys.append((state @ r[:, t].unsqueeze(-1)).squeeze(-1))
    return torch.stack(ys, dim=1), state


def wkv7_numpy(
    r: np.ndarray,
    w_raw: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    state_in: np.ndarray,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference WKV7 in numpy, computed in `dtype` (float64 by default: the oracle)."""
    r, k, v, a, b = (np.asarray(x, dtype) for x in (r, k, v, a, b))
    w = np.exp(-np.exp(np.asarray(w_raw, dtype)))
    S = np.array(state_in, dtype)
    y = np.empty_like(k)
    for t in range(k.shape[1]):
        sa = np.einsum("bhij,bhj->bhi", S, a[:, t])
        S = S * w[:, t, :, None, :] + sa[..., None] * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        y[:, t] = np.einsum("bhij,bhj->bhi", S, r[:, t])
    return y, S
