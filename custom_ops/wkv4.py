"""rwkv::WKV4: schema and reference implementations (numpy and torch).

The op (domain ``rwkv``, version 1; custom_ops/registry.py holds its entry), in the paper's symbols, per batch row b and channel c:

    inputs   time_decay [C]  raw decay d; the decay rate is w = exp(d)
             time_first [C]  bonus u for the current token
             k, v       [B, T, C] float32
             aa, bb, pp [B, C] float32  incoming state (numerator, denominator, running max)
    outputs  y          [B, T, C] float32
             aa, bb, pp [B, C] float32  outgoing state

Per token t (the numerically stable form of ../shared/spec/RWKV4.md):

    ww = u + k_t;       p = max(pp, ww); e1 = exp(pp - p); e2 = exp(ww - p)
    y_t = (e1*aa + e2*v_t) / (e1*bb + e2)
    ww = pp - exp(d);   p = max(ww, k_t); e1 = exp(ww - p); e2 = exp(k_t - p)
    aa = e1*aa + e2*v_t; bb = e1*bb + e2; pp = p

aa / bb are the decayed sums of e^{k_i} v_i and e^{k_i}, divided by e^{pp}. The initial state is
aa = bb = 0, pp = -1e38 (PP_INIT).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

OP_TYPE = "WKV4"
INPUTS = ("time_decay", "time_first", "k", "v", "aa", "bb", "pp")
OUTPUTS = ("y", "aa_out", "bb_out", "pp_out")
PP_INIT = -1e38  # "minus infinity" that stays finite: exp(PP_INIT - p) underflows to exactly 0


class WKVState(NamedTuple):
    """The WKV part of a layer's recurrent state, each [B, C]."""

    aa: torch.Tensor
    bb: torch.Tensor
    pp: torch.Tensor


# --- torch ------------------------------------------------------------------------------------


def wkv4_step(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: WKVState) -> tuple[torch.Tensor, WKVState]:
    """One token. w = exp(time_decay) [C]; u [C]; k, v [B, C]. Math in the dtype of k."""
    aa, bb, pp = state
    ww = u + k
    p = torch.maximum(pp, ww)
    e1 = torch.exp(pp - p)
    e2 = torch.exp(ww - p)
    y = (e1 * aa + e2 * v) / (e1 * bb + e2)
    ww = pp - w
    p = torch.maximum(ww, k)
    e1 = torch.exp(ww - p)
    e2 = torch.exp(k - p)
    return y, WKVState(e1 * aa + e2 * v, e1 * bb + e2, p)


def wkv4(
    time_decay: torch.Tensor,
    time_first: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    aa: torch.Tensor,
    bb: torch.Tensor,
    pp: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op itself over a sequence: k, v [B, T, C] -> y [B, T, C], aa, bb, pp [B, C].

    Runs in the dtype of k (float32 in every graph, float64 for the oracle). This is the function
    the exporter swaps for a single `rwkv::WKV4` node, so its signature is the op's.
    """
    w = torch.exp(time_decay.to(k.dtype))
    u = time_first.to(k.dtype)
    state = WKVState(aa, bb, pp)
    ys = []
    for t in range(k.shape[1]):
        y, state = wkv4_step(w, u, k[:, t], v[:, t], state)
        ys.append(y)
    return (torch.stack(ys, dim=1), *state)


# --- numpy (independent of torch, for kernels, ONNX bodies and plugins) ------------------------


def wkv4_numpy(
    time_decay: np.ndarray,
    time_first: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    aa: np.ndarray,
    bb: np.ndarray,
    pp: np.ndarray,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference WKV4 in numpy, computed in `dtype` (float64 by default: the oracle)."""
    w = np.exp(np.asarray(time_decay, dtype))
    u = np.asarray(time_first, dtype)
    k = np.asarray(k, dtype)
    v = np.asarray(v, dtype)
    aa, bb, pp = (np.array(s, dtype) for s in (aa, bb, pp))
    y = np.empty_like(k)
    with np.errstate(over="ignore", under="ignore"):
        for t in range(k.shape[1]):
            kt, vt = k[:, t], v[:, t]
            ww = u + kt
            p = np.maximum(pp, ww)
            e1, e2 = np.exp(pp - p), np.exp(ww - p)
            y[:, t] = (e1 * aa + e2 * vt) / (e1 * bb + e2)
            ww = pp - w
            p = np.maximum(ww, kt)
            e1, e2 = np.exp(ww - p), np.exp(kt - p)
            aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, p
    return y, aa, bb, pp


def initial_wkv_state_numpy(batch: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """aa = bb = 0, pp = PP_INIT, float32 [B, C]."""
    zeros = np.zeros((batch, channels), np.float32)
    return zeros, zeros.copy(), np.full((batch, channels), PP_INIT, np.float32)
