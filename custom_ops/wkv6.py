"""rwkv::WKV6: schema and reference implementations (torch and numpy), ../shared/spec/RWKV6.md.

The op (domain ``rwkv``, version 1; custom_ops/registry.py holds its entry), per batch row b and head h, S[i=key][j=value] (key-major):

    inputs   r, k, v   [B, T, H, N] float32 (float16 allowed: cast to float32 inside)
             w_raw     [B, T, H, N] float32  per-token decay exponent: w = exp(-exp(w_raw)) in (0, 1)
             u         [H, N]       float32  bonus of the current token
             state_in  [B, H, N, N] float32  key-major
    outputs  y         [B, T, H, N] float32
             state_out [B, H, N, N] float32

Per token t:  y_j = sum_i r_i * (u_i * k_i * v_j + S_ij);   S_ij <- w_i * S_ij + k_i * v_j.
The decay is computed inside in float32 (never stored in float16: w near 1 would round to 1). The
same op serves RWKV-5 with w_raw broadcast over (B, T) (custom_ops/wkv5.py).
"""

from __future__ import annotations

import numpy as np
import torch

OP_TYPE = "WKV6"
INPUTS = ("r", "k", "v", "w_raw", "u", "state_in")
OUTPUTS = ("y", "state_out")
STATE_LAYOUT = "key-major [B, H, N(key), N(value)]"


def wkv6(
    r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w_raw: torch.Tensor, u: torch.Tensor, state_in: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op over a sequence (the sequential scan that defines it), in the dtype of state_in.

    This is the function the exporter will swap for one `rwkv::WKV6` node: its signature is the op's.
    """
    dt = state_in.dtype
    r, k, v = r.to(dt), k.to(dt), v.to(dt)
    w = torch.exp(-torch.exp(w_raw.to(dt)))  # [B, T, H, N]
    return _scan(r, k, v, w.expand_as(k), u.to(dt), state_in)


def _scan(
    r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared by WKV5 and WKV6: w is the decay itself, [B, T, H, N] (may be an expanded view)."""
    ys = []
    for t in range(k.shape[1]):
        rt, kt, vt = r[:, t], k[:, t], v[:, t]  # [B, H, N]
        bonus = (rt * u * kt).sum(-1, keepdim=True) * vt  # sum_i r_i u_i k_i v_j
        ys.append(bonus + (rt.unsqueeze(-2) @ state).squeeze(-2))  # + sum_i r_i S_ij
        state = w[:, t].unsqueeze(-1) * state + kt.unsqueeze(-1) * vt.unsqueeze(-2)
    return torch.stack(ys, dim=1), state


def wkv6_numpy(
    r: np.ndarray, k: np.ndarray, v: np.ndarray, w_raw: np.ndarray, u: np.ndarray, state_in: np.ndarray, dtype: type = np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Reference WKV6 in numpy, computed in `dtype` (float64 by default: the oracle)."""
    r, k, v, u = (np.asarray(a, dtype) for a in (r, k, v, u))
    w = np.broadcast_to(np.exp(-np.exp(np.asarray(w_raw, dtype))), k.shape)
    S = np.array(state_in, dtype)
    y = np.empty_like(k)
    for t in range(k.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # [B, H, N(i), N(j)]
        y[:, t] = np.einsum("bhi,bhij->bhj", r[:, t], u[None, :, :, None] * kv + S)
        S = w[:, t, :, :, None] * S + kv
    return y, S
