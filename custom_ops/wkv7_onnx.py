"""rwkv::WKV7 as a model-local ONNX function body in standard ONNX ops (see custom_ops/onnx_function.py).

The sequential recurrence of custom_ops/wkv7.py as an ONNX Scan over T, one token per iteration, the
per-head state S [B, H, N(value), N(key)] (value-major) carried:

    sa_i = sum_j S_ij a_j;   S_ij <- S_ij w_j + sa_i b_j + v_i k_j;   y_i = sum_j S_ij r_j
with w = exp(-exp(w_raw)) [B, T, H, N] computed in float32, batched before the Scan. Only the
state-dependent work runs per token (b and k are stacked for one rank-2 update outside the loop):
6 ops a token (14 before). r, k, v, a, b may be float16 (cast to float32 at the top of the body).

No chunked WKV7: the delta rule (S feeds back through a) chunks through a UT transform (within a
chunk, h_t = S_{t-1} a_t solves a unit lower-triangular system; S_L = S_0 F + C). Built and measured
on ORT CPU, it was 1.6-6x slower than the scan body: the chunk's transition S_0 F alone costs N^3 per
chunk, no less than the scan's per-token rank-2 updates, and the pairwise [L, L, N] decay factors
come on top. Not kept. The measurements: benchmarks/results/onnx-bodies.md.
"""

from __future__ import annotations

import onnx

from rwkv_export.ops.onnx_builder import Axes, Builder, decay, scan_over_time, to_float
from rwkv_export.ops.wkv7 import INPUTS


def _token_body() -> tuple[Builder, str, list[str], str, str]:
    """WKV7 token: S [B, H, N(v), N(k)]; r_col, a_col, v_col [B, H, N, 1]; w_row [B, H, 1, N];
    bk [B, H, 2, N] (rows b and k): S <- S w + [S a, v] @ [b; k], y = S r (the updated S)."""
    g = Builder("t_")
    S, r, w, a, v, bk = "t_S", "t_r", "t_w", "t_a", "t_v", "t_bk"
    sa_v = g.op("Concat", g.op("MatMul", S, a), v, axis=-1)  # [B, H, N, 2]: (sum_j S_ij a_j, v_i)
    new_S = g.op("Add", g.op("Mul", S, w), g.op("MatMul", sa_v, bk))  # S_ij w_j + sa_i b_j + v_i k_j
    y = g.op("MatMul", new_S, r)  # [B, H, N, 1]: sum_j S_ij r_j
    return g, S, [r, w, a, v, bk], y, new_S


def _scan_body(g: Builder, ax: Axes, r: str, w_raw: str, k: str, v: str, a: str, b: str, state_in: str) -> tuple[str, str]:
    """The scan form of WKV7 in builder `g`: (y [B, T, H, N], state_out)."""
    row = lambda x: g.op("Unsqueeze", x, ax.second_last)  # noqa: E731  [B, T, H, 1, N]
    col = lambda x: g.op("Unsqueeze", x, ax.last)  # noqa: E731  [B, T, H, N, 1]
    outer = [col(r), row(decay(g, w_raw)), col(a), col(v), g.op("Concat", row(b), row(k), axis=-2)]
    body, S, names, y, new_S = _token_body()
    y5, s_out = scan_over_time(g, "WKV7", body, state_in, S, dict(zip(names, outer)), y, new_S)
    return g.op("Squeeze", y5, ax.last), s_out


def nodes(op: str, body: str, chunk: int | None, single_step: bool = True) -> list[onnx.NodeProto]:
    """The function body of rwkv::WKV7 (the scan body, its only one), outputs named y and state_out."""
    r, w_raw, k, v, a, b, state_in = INPUTS
    g = Builder("wkv7_")
    ax = Axes(g)
    r32, k32, v32, a32, b32 = (to_float(g, x) for x in (r, k, v, a, b))
    y_out, s_out = _scan_body(g, ax, r32, w_raw, k32, v32, a32, b32, state_in)
    g.rename(y_out, "y")
    g.rename(s_out, "state_out")
    return g.nodes
