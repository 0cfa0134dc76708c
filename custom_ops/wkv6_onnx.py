"""rwkv::WKV5 and rwkv::WKV6 as model-local ONNX function bodies in standard ONNX ops.

As for every WKV op (custom_ops/onnx_function.py), the exporter emits one custom node per layer
carrying the TensorRT plugin attributes and ships the op's FunctionProto in `model.functions`, so
onnxruntime and `onnx.reference.ReferenceEvaluator` run the file without a custom-op library. The
math is the sequential recurrence that defines the ops (custom_ops/wkv5.py, wkv6.py), with the
per-head state S [B, H, N(key), N(value)] as the carried value:

    y_j = sum_i r_i u_i k_i v_j + sum_i r_i S_ij;   S_ij <- w_i S_ij + k_i v_j
with w = exp(-exp(w_raw)) computed once per call in float32, outside the loop (WKV5: one [H, N]
decay; WKV6: [B, T, H, N], batched before the Scan).

Bodies:
- ``scan``: an ONNX Scan over T, 4 ops a token (only the state-dependent work runs per token).
- ``chunked`` (the default): T cut into chunks of L tokens (the last padded with r = k = v = 0 and
  w = 1, which leave y and S unchanged). With c the cumulative log decay within a chunk (c_ex
  exclusive, c_in inclusive, c_L the chunk's total), every factor below is e^(<= 0):
      y_t   = (r_t e^c_ex_t) S_in + sum_{s<t} [sum_i r_t,i k_s,i e^(c_ex_t,i - c_in_s,i)] v_s + (r_t.u.k_t) v_t
      S_out = e^c_L S_in + sum_s (k_s e^(c_L - c_in_s)) (x) v_s
  The intra-chunk part ([L, L, N] factors per head) is computed for all chunks at once; a Scan over
  the T / L chunks carries S with two MatMuls. Exp arguments are clamped at -60 (ORT's Exp is ~15x
  slower on arguments that underflow; e^-60 is far below float32 rounding of the sums). T == 1 (every
  step graph) goes through an If to the scan body.

`chunked` is 1.7-2.9x the scan body from T = 64 on and equally accurate (1.26x on a whole 169M-like
RWKV-6 prefill of 128 tokens), hence the default; T = 1 takes the scan body through the If. The
measurements: benchmarks/results/onnx-bodies.md (benchmarks/bench_onnx_bodies.py).

Inputs may be float16 (the op's contract): r, k, v are cast to float32 at the top of the body; the
exporter's own graphs already feed float32, where ORT drops the casts. Tensors are transposed to
[T, B, H, N] and scanned along axis 0: onnx.reference's Scan supports axis 0 only, and ORT
transposes for another axis anyway. Axis constants of the body are created in the function's scope
(the body reads them from the outer scope: no Constant op per token).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from rwkv_export.ops.onnx_builder import EXP_FLOOR, Axes, Builder, decay, float_inputs, if_single_token, scan_over_time, to_float
from rwkv_export.ops.wkv6 import INPUTS

# Only the state-dependent work runs per token: every reshape of the inputs and the bonus (which does
# not read S) is computed once for all T outside the loop. ORT's cost per Scan iteration is mostly per
# op, so the body is as few ops as the math allows: 4 (12 before).


def _token_body(decay: str | None) -> tuple[Builder, str, list[str], str, str]:
    """WKV5/6 token: S [B, H, N(k), N(v)]; r_row, v_row [B, H, 1, N]; k_col (, w_col) [B, H, N, 1].

    decay: WKV5's [H, N, 1] decay from the outer scope; None (WKV6) scans a per-token w_col.
    Returns y_read [B, H, 1, N] = sum_i r_i S_ij; the caller adds the bonus (r.u.k) v outside.
    """
    b = Builder("t_")
    S, r, k, v, w = "t_S", "t_r", "t_k", "t_v", "t_w"
    read = b.op("MatMul", r, S)  # [B, H, 1, N]: sum_i r_i S_ij
    new_S = b.op("Add", b.op("Mul", decay if decay is not None else w, S), b.op("Mul", k, v))  # w_i S_ij + k_i v_j
    names = [r, k, v] if decay is not None else [r, k, v, w]
    return b, S, names, read, new_S


def _scan_body(g: Builder, op: str, ax: Axes, r: str, k: str, v: str, w_raw: str, u: str, state_in: str) -> tuple[str, str]:
    """The scan form of WKV5/6 in builder `g`: (y [B, T, H, N], state_out)."""
    w = decay(g, w_raw)
    row = lambda x: g.op("Unsqueeze", x, ax.second_last)  # noqa: E731  [..., 1, N]
    col = lambda x: g.op("Unsqueeze", x, ax.last)  # noqa: E731  [..., N, 1]
    if op == "WKV5":  # one decay [H, N] for every token: a column [H, N, 1] read from the outer scope
        body, S, names, y, new_S = _token_body(col(w))
        scanned = dict(zip(names, (row(r), col(k), row(v))))
    else:
        body, S, names, y, new_S = _token_body(None)
        scanned = dict(zip(names, (row(r), col(k), row(v), col(w))))
    read, s_out = scan_over_time(g, op, body, state_in, S, scanned, y, new_S)
    bonus = g.op("Mul", g.op("ReduceSum", g.op("Mul", g.op("Mul", r, u), k), ax.last, keepdims=1), v)  # (r.u.k) v, all T
    return g.op("Add", bonus, g.op("Squeeze", read, ax.second_last)), s_out


def _chunked_body(g: Builder, op: str, r: str, k: str, v: str, w_raw: str, u: str, state_in: str, L: int) -> tuple[str, str]:
    """The chunked form of WKV5/6 in builder `g`: (y [B, T, H, N], state_out); see the module docstring.

    Per chunk of L tokens, with c the cumulative log decay over the chunk (exclusive: c_ex, inclusive:
    c_in, total: c_L), every factor is e^(<= 0):
        y_t   = (r_t e^c_ex_t) S_in + sum_{s<t} [sum_i r_t,i k_s,i e^(c_ex_t,i - c_in_s,i)] v_s + (r_t.u.k_t) v_t
        S_out = e^c_L S_in + sum_s (k_s e^(c_L - c_in_s)) (x) v_s
    The pairwise [L, L, N] factors are built for all chunks at once; a Scan over chunks carries S.
    """
    c = Builder(g.prefix + "c")
    shape = c.op("Shape", k)
    B, T, H, N = (c.op("Slice", shape, c.ints(a), c.ints(a + 1)) for a in range(4))
    n_chunks = c.op("Div", c.op("Add", T, c.ints(L - 1)), c.ints(L))
    pads = c.op("Concat", c.ints(0, 0, 0, 0, 0), c.op("Sub", c.op("Mul", n_chunks, c.ints(L)), T), c.ints(0, 0), axis=0)
    log_w = c.op("Neg", c.op("Exp", to_float(c, w_raw)))  # log w <= 0, float32
    if op == "WKV5":  # [H, N] -> [B, T, H, N]
        log_w = c.op("Expand", log_w, shape)
    chunked = c.op("Concat", B, c.ints(-1, L), H, N, axis=0)

    def to_chunks(x: str) -> str:  # [B, T, H, N] -> [nC, B, H, L, N]; padded tokens: r = k = v = 0, w = 1
        return c.op("Transpose", c.op("Reshape", c.op("Pad", x, pads, c.const(0.0)), chunked), perm=[1, 0, 3, 2, 4])

    r, k, v, log_w = (to_chunks(x) for x in (r, k, v, log_w))
    exp0 = lambda x: c.op("Exp", c.op("Max", x, c.const(EXP_FLOOR)))  # noqa: E731  e^x for x <= 0, no slow path
    tokens, last = c.ints(3), c.ints(-1)
    c_in = c.op("CumSum", log_w, c.const(3, np.int64))  # CumSum's axis is a scalar
    c_ex = c.op("Sub", c_in, log_w)
    c_total = c.op("Slice", c_in, c.ints(L - 1), c.ints(L), tokens)  # [nC, B, H, 1, N]
    lags = c.op("Sub", c.op("Unsqueeze", c_ex, c.ints(4)), c.op("Unsqueeze", c_in, c.ints(3)))  # [nC, B, H, L(t), L(s), N]
    below = c.const(np.tril(np.ones((L, L), np.float32), -1)[:, :, None])  # s < t; above, lags > 0 would overflow
    decays = c.op("Mul", exp0(c.op("Min", lags, c.const(0.0))), below)
    rk = c.op("Mul", c.op("Unsqueeze", r, c.ints(4)), c.op("Unsqueeze", k, c.ints(3)))
    scores = c.op("ReduceSum", c.op("Mul", rk, decays), last, keepdims=0)  # [nC, B, H, L, L]
    bonus = c.op("Mul", c.op("ReduceSum", c.op("Mul", c.op("Mul", r, c.op("Unsqueeze", u, c.ints(1))), k), last, keepdims=1), v)
    y_intra = c.op("Add", c.op("MatMul", scores, v), bonus)  # [nC, B, H, L, N]
    r_dec = c.op("Mul", r, exp0(c_ex))
    k_dec_t = c.op("Transpose", c.op("Mul", k, exp0(c.op("Sub", c_total, c_in))), perm=[0, 1, 2, 4, 3])  # [nC, B, H, N, L]
    s_dec = c.op("Transpose", exp0(c_total), perm=[0, 1, 2, 4, 3])  # [nC, B, H, N, 1]: key i's decay over the chunk
    body = Builder(g.prefix + "cb_")
    S, r_i, k_i, v_i, d_i = (f"{body.prefix}{n}" for n in ("S", "r", "k", "v", "d"))
    y_inter = body.op("MatMul", r_i, S)  # [B, H, L, N]
    new_S = body.op("Add", body.op("Mul", d_i, S), body.op("MatMul", k_i, v_i))
    outs = [f"{body.prefix}S_out", f"{body.prefix}y"]
    body.rename(new_S, outs[0])
    body.rename(y_inter, outs[1])
    graph = helper.make_graph(body.nodes, f"{op.lower()}_chunk_carry", float_inputs([S, r_i, k_i, v_i, d_i]), float_inputs(outs))
    s_out, y_inter = c.ops("Scan", state_in, r_dec, k_dec_t, v, s_dec, outputs=2, body=graph, num_scan_inputs=4)
    y = c.op("Transpose", c.op("Add", y_intra, y_inter), perm=[1, 0, 3, 2, 4])  # [B, nC, L, H, N]
    y = c.op("Slice", c.op("Reshape", y, c.op("Concat", B, c.ints(-1), H, N, axis=0)), c.ints(0), T, c.ints(1))
    g.nodes += c.nodes
    return y, s_out


def nodes(op: str, body: str, chunk: int | None, single_step: bool = True) -> list[onnx.NodeProto]:
    """The function body of rwkv::WKV5 or WKV6 written as `body` (chunk: L of the chunked body), its
    outputs named y and state_out. single_step: the chunked body sends T == 1 to the scan body (an If)."""
    r, k, v, w_raw, u, state_in = INPUTS
    L = int(chunk or 4)
    g = Builder(f"{op.lower()}_")
    ax = Axes(g)
    r32, k32, v32 = (to_float(g, x) for x in (r, k, v))
    u32 = to_float(g, u)
    if body == "scan":
        y_out, s_out = _scan_body(g, op, ax, r32, k32, v32, w_raw, u32, state_in)
    elif not single_step:
        y_out, s_out = _chunked_body(g, op, r32, k32, v32, w_raw, u32, state_in, L)
    else:
        y_out, s_out = if_single_token(
            g,
            op,
            k32,
            lambda bld: _scan_body(bld, op, ax, r32, k32, v32, w_raw, u32, state_in),
            lambda bld: _chunked_body(bld, op, r32, k32, v32, w_raw, u32, state_in, L),
        )
    g.rename(y_out, "y")
    g.rename(s_out, "state_out")
    return g.nodes
