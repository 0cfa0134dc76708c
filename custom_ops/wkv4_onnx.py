"""rwkv::WKV4 as a model-local ONNX function: the op written with standard ONNX ops only.

The exporter emits one `rwkv::WKV4` node per layer and ships this FunctionProto in
`model.functions`, so onnxruntime (which inlines model-local functions) and
`onnx.reference.ReferenceEvaluator` run the file without a custom-op library, while TensorRT swaps
the node for its plugin (the node carries `plugin_namespace` / `plugin_version`, see
../shared/spec/TENSORRT.md). The math is the stable recurrence of `custom_ops/wkv4.py`.

Bodies (all float32; all stable from pp = -1e38, for |k| ~ 60 and over T = 4096):

- ``scan``: an ONNX Scan over T, one token per iteration: the step of wkv4.py, 23 ops a token.
  Its rounding is the spec's float32 recurrence exactly (same ops, same order).
- ``chunked``: T cut into chunks of L tokens (the last padded with k = -1e38, v = 0, which weigh
  exactly 0). (1) Each chunk's own state summary (state after its real tokens, from empty) is a
  log-sum-exp over L tokens, [B, nC, L, C]; (2) a Scan over the nC = ceil(T / L) chunks carries
  the state; (3) each y_t is a log-sum-exp over the chunk's tokens i <= t (k_i - (t-1-i) w below
  the diagonal, u + k_t on it, masked above) and the incoming state (pp_in - t w): one
  [B, nC, L, L, C] tensor with a row max before the exp. Unconditionally stable; rounds ~10x
  less than the sequential recurrence; costs ~7 passes over T*L*C elements.
- ``gemm``: the same chunking and carry, but each chunk's rows are one batched MatMul over
  channels, [C, N, L] @ D^T[C, L, L] with D = e^(-(t-1-i) w) (e^u on the diagonal) and inputs
  e^(k_i - k_max(chunk)) <= 1; the rows' log scale (k_max + log d_t) is then merged with the
  incoming state. Exact while a chunk's k range + max |u| <= GEMM_MAX_RANGE (70); beyond that an
  If runs the scan body instead (the check is one reduction over k).
All bodies put T == 1 through an If straight to the one-token body (the step graph runs WKV once
per layer per token), and build their weight-only tensors (w = e^d, the [L, L] matrices) at the top
of the function, where ORT constant-folds them once since time_decay / time_first are initializers.

The default body is ``gemm``, chosen on the whole model rather than the op alone: on the 169M-shaped
RWKV-4 prefill (2 threads) it gave ~1.15x the scan body's tok/s at 1 x 512 and 1 x 1024, ties at
8 x 128 and 1 x 128, scan 5% ahead at 2 x 512; batch-1 prefill is the latency that matters most. In
the op alone the bodies are level within run-to-run noise (at T = 1 all take the same If branch,
~30 us, so the step graph is unaffected). `scan` (the spec's own rounding, no data-dependent branch)
remains available with --wkv-form scan, and is what a TensorRT build inlines (rwkv_export/engine.py);
`chunked` is the unconditionally stable batched reference (and the most accurate body). The
measurements: benchmarks/results/onnx-bodies.md (benchmarks/bench_onnx_bodies.py).

Tried and dropped, none faster than scan here: unrolling the Scan 2-16 tokens per iteration
(bit-identical, no gain: the per-iteration cost is small beside the ops); a Scan carrying only the
state with y computed batched afterwards (9 ops a token in the loop, slower overall); a fused body
with aa, bb stacked (17 ops a token, slower). A log-depth (Hillis-Steele) scan over T was not
built: log2(T) levels of ~15 passes over [B, T, C] is more elementwise work than the chunked bodies.

ORT / onnx notes: ORT inlines model-local functions (the optimized graph has no WKV4 node) and
ignores extra node attributes; `plugin_namespace` / `plugin_version` pass onnx.checker
(full_check) and ORT whether or not the FunctionProto declares them (it does). full_check rejects
a function whose default-domain opset differs from the model's (ORT accepts it): build with the
model's opset. onnx.reference's Scan only scans axis 0 (hence the explicit transposes). ORT's Exp
runs ~15x slower on arguments under ~-87 (results that underflow, e.g. exp(-1e38 - p)): the
batched bodies clamp exp arguments at -60 relative to the row max. ORT's broadcasting Where and
general Transpose permutations are ~10-20x slower than Mul and single-axis transposes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from rwkv_export.ops.onnx_builder import EXP_FLOOR, FLOAT, Builder, float_inputs
from rwkv_export.ops.wkv4 import INPUTS, OUTPUTS, PP_INIT

# --- the single step (Scan body and the T == 1 branch) ------------------------------------------


def _step(g: Builder, w: str, u: str, k: str, v: str, aa: str, bb: str, pp: str):
    """One token, the stable form of wkv4.py. k, v, aa, bb, pp [B, C]; w, u [C]."""
    num, den, _ = _blend(g, pp, g.op("Add", u, k), aa, bb, v)  # the output: aa, bb weighted against e^(u + k)
    y = g.op("Div", num, den)
    aa, bb, p = _blend(g, g.op("Sub", pp, w), k, aa, bb, v)  # the state: decayed aa, bb plus e^k
    return y, aa, bb, p


def _blend(g: Builder, a: str, b: str, aa: str, bb: str, v: str) -> tuple[str, str, str]:
    """Sums in the shifted-exponent form: e1 = e^(a - p), e2 = e^(b - p), p = max(a, b) ->
    (e1 * aa + e2 * v, e1 * bb + e2, p)."""
    p = g.op("Max", a, b)
    e1 = g.op("Exp", g.op("Sub", a, p))
    e2 = g.op("Exp", g.op("Sub", b, p))
    return g.op("Add", g.op("Mul", e1, aa), g.op("Mul", e2, v)), g.op("Add", g.op("Mul", e1, bb), e2), p


def _step_graph(w: str, u: str, k: str, v: str, aa: str, bb: str, pp: str) -> onnx.GraphProto:
    """If-branch for T == 1: k, v [B, 1, C] from the outer scope -> y [B, 1, C] and the state."""
    g = Builder("st_")
    axis = g.ints(1)
    k1, v1 = g.op("Squeeze", k, axis), g.op("Squeeze", v, axis)
    y, aa, bb, pp = _step(g, w, u, k1, v1, aa, bb, pp)
    outs = [g.op("Unsqueeze", y, axis), aa, bb, pp]
    names = [f"st_out_{n}" for n in OUTPUTS]
    for o, n in zip(outs, names):
        g.rename(o, n)
    return helper.make_graph(g.nodes, "wkv4_step", [], float_inputs(names))


# --- forms ----------------------------------------------------------------------------------


def _scan_body(g: Builder, w, T, u, k, v, aa, bb, pp) -> list[str]:
    """Scan over T: the step body per token, y stacked per token.

    k, v are transposed to [T, B, C] and scanned along axis 0: ORT would transpose for another
    axis anyway, and onnx.reference's Scan supports axis 0 only.
    """
    seq_first = dict(perm=[1, 0, 2])  # [B, T, C] <-> [T, B, C]
    body = Builder("sc_")
    names = ["sc_aa", "sc_bb", "sc_pp", "sc_k", "sc_v"]
    y, aa2, bb2, pp2 = _step(body, w, u, names[3], names[4], *names[:3])
    outs = ["sc_aa_out", "sc_bb_out", "sc_pp_out", "sc_y"]
    for o, n in zip((aa2, bb2, pp2, y), outs):
        body.rename(o, n)  # in place: no Identity ops in the body
    graph = helper.make_graph(body.nodes, "wkv4_scan_body", float_inputs(names), float_inputs(outs))
    kt, vt = g.op("Transpose", k, **seq_first), g.op("Transpose", v, **seq_first)
    aa, bb, pp, y = g.ops("Scan", aa, bb, pp, kt, vt, outputs=4, body=graph, num_scan_inputs=2)
    return [g.op("Transpose", y, **seq_first), aa, bb, pp]


# gemm form: chunk k range + max |u| must stay under this. A term lost to float32 underflow
# (< e^-87) is then < e^(70-87) ~ 4e-8 of the row's smallest possible total (its bonus term).
GEMM_MAX_RANGE = 70.0
DECAY_FLOOR = -87.0  # e^-87 is still a normal float32


def _exp_rel(g: Builder, x: str) -> str:
    """exp(x) for x <= 0 measured from the largest term of a sum that holds a term e^0.

    Clamping at EXP_FLOOR changes such a sum by < e^-60 relative, and avoids ORT's Exp slow path:
    arguments below ~-87 (underflow, e.g. the -1e38 of an empty state) run ~15x slower.
    """
    return g.op("Exp", g.op("Max", x, g.const(EXP_FLOOR)))


def _chunk_constants(L: int):
    """Data-independent [L, L] patterns of the in-chunk matrix (row t = output, column i = token)."""
    t = np.arange(L)[:, None]
    i = np.arange(L)[None, :]
    lags = (t - 1 - i).astype(np.float32)  # the decay steps of token i seen from output t
    return lags, i < t, i == t, np.arange(L, dtype=np.float32)[:, None]


class _Chunks:
    """k, v cut into [B, nC, L, C] chunks (the last one padded) and each chunk's real length."""

    def __init__(self, g: Builder, T: str, k: str, v: str, L: int, k_pad_mode: str):
        self.L = L
        n_chunks = g.op("Div", g.op("Add", T, g.ints(L - 1)), g.ints(L))  # [1] ceil(T / L)
        pad = g.op("Sub", g.op("Mul", n_chunks, g.ints(L)), T)
        pads = g.op("Concat", g.ints(0, 0, 0, 0), pad, g.ints(0), axis=0)
        shape = g.op("Shape", k)
        self.batch, self.channels = (g.op("Slice", shape, g.ints(a), g.ints(a + 1)) for a in (0, 2))
        chunked = g.op("Concat", self.batch, g.ints(-1, L), self.channels, axis=0)
        # padded k: -1e38 (weight exactly 0) or "edge" (keeps the chunk's k range); padded v: 0
        k_pad = [g.const(PP_INIT)] if k_pad_mode == "constant" else []
        self.k = g.op("Reshape", g.op("Pad", k, pads, *k_pad, mode=k_pad_mode), chunked)  # [B, nC, L, C]
        self.v = g.op("Reshape", g.op("Pad", v, pads, g.const(0.0)), chunked)  # [B, nC, L, C]
        one, length = g.const(1, np.int64), g.const(L, np.int64)
        starts = g.op("Mul", g.op("Range", g.const(0, np.int64), g.op("Squeeze", n_chunks), one), length)
        lens = g.op("Min", g.op("Sub", g.op("Squeeze", T), starts), length)  # [nC] real tokens
        self.lens = g.op("Unsqueeze", g.op("Cast", lens, to=FLOAT), g.ints(1))  # [nC, 1]

    def to_sequence(self, g: Builder, T: str, y: str) -> str:
        """[B, nC, L, C] -> [B, T, C], dropping the padded tail."""
        y = g.op("Reshape", y, g.op("Concat", self.batch, g.ints(-1), self.channels, axis=0))
        return g.op("Slice", y, g.ints(0), T, g.ints(1))


def _chunk_summaries(g: Builder, ch: _Chunks, w: str):
    """Each chunk's own state after its real tokens from an empty state: (p, a, b), each [nC, B, C].

    p = max_i (k_i - (len-1-i) w) is the canonical running max, so the carried pp is the oracle's.
    """
    age = g.op("Sub", g.op("Sub", ch.lens, g.const(1.0)), g.const(np.arange(ch.L, dtype=np.float32)))
    log_decay = g.op("Mul", g.op("Unsqueeze", age, g.ints(2)), g.op("Neg", w))  # [nC, L, C]
    padded = g.op("Unsqueeze", g.op("Less", age, g.const(0.0)), g.ints(2))  # [nC, L, 1]
    log_decay = g.op("Where", padded, g.const(PP_INIT), log_decay)
    s = g.op("Add", ch.k, log_decay)  # [B, nC, L, C]
    p = g.op("ReduceMax", s, g.ints(2), keepdims=1)  # [B, nC, 1, C]
    e = _exp_rel(g, g.op("Sub", s, p))
    a = g.op("ReduceSum", g.op("Mul", e, ch.v), g.ints(2), keepdims=0)  # [B, nC, C]
    b = g.op("ReduceSum", e, g.ints(2), keepdims=0)
    to_scan = dict(perm=[1, 0, 2])  # [B, nC, C] -> [nC, B, C]
    return [g.op("Transpose", x, **to_scan) for x in (g.op("Squeeze", p, g.ints(2)), a, b)]


def _chunk_carry(g: Builder, ch: _Chunks, w: str, aa: str, bb: str, pp: str):
    """Scan over chunks: the final state [B, C] and each chunk's incoming state [B, nC, 1, C]."""
    p_c, a_c, b_c = _chunk_summaries(g, ch, w)
    decay_c = g.op("Mul", ch.lens, w)  # [nC, C] log decay over each chunk
    body = Builder("ch_")
    names = ["ch_aa", "ch_bb", "ch_pp", "ch_p", "ch_a", "ch_b", "ch_decay"]
    s_aa, s_bb, s_pp, p_i, a_i, b_i, dec = names
    pd = body.op("Sub", s_pp, dec)
    p = body.op("Max", pd, p_i)
    e1, e2 = _exp_rel(body, body.op("Sub", pd, p)), _exp_rel(body, body.op("Sub", p_i, p))
    new_aa = body.op("Add", body.op("Mul", e1, s_aa), body.op("Mul", e2, a_i))
    new_bb = body.op("Add", body.op("Mul", e1, s_bb), body.op("Mul", e2, b_i))
    outs = ["ch_aa_out", "ch_bb_out", "ch_pp_out", "ch_aa_in", "ch_bb_in", "ch_pp_in"]
    for o, n in zip((new_aa, new_bb, p, s_aa, s_bb, s_pp), outs):
        body.rename(o, n)
    graph = helper.make_graph(body.nodes, "wkv4_chunk_carry", float_inputs(names), float_inputs(outs))
    aa_f, bb_f, pp_f, *incoming = g.ops("Scan", aa, bb, pp, p_c, a_c, b_c, decay_c, outputs=6, body=graph, num_scan_inputs=4)
    from_scan = dict(perm=[1, 0, 2])  # [nC, B, C] -> [B, nC, C]
    incoming = [g.op("Unsqueeze", g.op("Transpose", x, **from_scan), g.ints(2)) for x in incoming]
    return (aa_f, bb_f, pp_f), incoming


def _chunked_weights(g: Builder, w: str, u: str, chunk: int = 4) -> str:
    """Log weights [L(t), L(i), C] of the in-chunk matrix: -(t-1-i) w below the diagonal, u on it,
    -1e38 above. Weights only: built at the top of the function, where ORT constant-folds it."""
    lags, below, diag, _ = (x[..., None] for x in _chunk_constants(chunk))  # [L, L, 1]
    neg_w = g.op("Neg", w)
    m_log = g.op(
        "Where", g.const(below, bool), g.op("Mul", g.const(lags), neg_w),
        g.op("Where", g.const(diag, bool), u, g.const(PP_INIT)),
    )  # fmt: skip  # [L, L, C]
    return m_log


def _chunked_body(g: Builder, w, T, u, k, v, aa, bb, pp, pre: str, chunk: int = 4) -> list[str]:
    """Chunks of L tokens: [L, L] log-sum-exps per chunk, a Scan over chunks for the carry."""
    t_col = _chunk_constants(chunk)[3]  # [L, 1]
    ch = _Chunks(g, T, k, v, chunk, "constant")
    final, (aa_in, bb_in, pp_in) = _chunk_carry(g, ch, w, aa, bb, pp)  # incoming [B, nC, 1, C]
    # row t: tokens i < t (decayed), i == t (bonus u), i > t masked; plus the incoming state
    neg_w = g.op("Neg", w)
    s = g.op("Add", g.op("Unsqueeze", ch.k, g.ints(2)), pre)  # [B, nC, L(t), L(i), C]
    q = g.op("Add", pp_in, g.op("Mul", g.const(t_col), neg_w))  # [B, nC, L, C] state weight
    m = g.op("Max", g.op("ReduceMax", s, g.ints(3), keepdims=0), q)  # [B, nC, L, C]
    e = _exp_rel(g, g.op("Sub", s, g.op("Unsqueeze", m, g.ints(3))))  # [B, nC, L, L, C]
    e_state = _exp_rel(g, g.op("Sub", q, m))  # [B, nC, L, C]
    num = g.op("ReduceSum", g.op("Mul", e, g.op("Unsqueeze", ch.v, g.ints(2))), g.ints(3), keepdims=0)
    num = g.op("Add", num, g.op("Mul", e_state, aa_in))
    den = g.op("Add", g.op("ReduceSum", e, g.ints(3), keepdims=0), g.op("Mul", e_state, bb_in))
    return [ch.to_sequence(g, T, g.op("Div", num, den)), *final]


def _gemm_rows(g: Builder, ch: _Chunks, d_mat_t: str, k_ref: str):
    """In-chunk sums relative to e^k_ref via one batched MatMul over channels: n, d [B, nC, L, C].

    n_t = sum_i D[c, t, i] e^(k_i - k_ref) v_i with D = e^(-(t-1-i) w) below the diagonal, e^u on it.
    Computed transposed, [C, N, L(i)] @ D^T [C, L(i), L(t)]: both transposes then move one axis,
    which ORT does ~20x faster than a general permutation.
    """
    x = g.op("Exp", g.op("Sub", ch.k, k_ref))  # [B, nC, L, C] in [e^-GEMM_MAX_RANGE, 1]
    xs = g.op("Concat", g.op("Mul", x, ch.v), x, axis=0)  # [2B, nC, L, C]
    xs = g.op("Reshape", xs, g.op("Concat", g.ints(-1, ch.L), ch.channels, axis=0))  # [N, L, C]
    rows = g.op("MatMul", g.op("Transpose", xs, perm=[2, 0, 1]), d_mat_t)  # [C, N, L(t)]
    rows_shape = g.op("Concat", g.op("Mul", ch.batch, g.ints(2)), g.ints(-1, ch.L), ch.channels, axis=0)
    rows = g.op("Reshape", g.op("Transpose", rows, perm=[1, 2, 0]), rows_shape)  # [2B, nC, L, C]
    return g.ops("Split", rows, g.op("Concat", ch.batch, ch.batch, axis=0), axis=0, outputs=2)


def _gemm_weights(g: Builder, w: str, u: str, chunk: int = 16) -> str:
    """D^T [C, L(i), L(t)] of _gemm_rows: depends on the weights only, so it is built at the top of
    the function, where ORT constant-folds it once (time_decay, time_first are initializers)."""
    lags, below, diag, _ = (np.ascontiguousarray(x.T) for x in _chunk_constants(chunk))  # [L(i), L(t)]
    w_col, u_col = (g.op("Unsqueeze", x, g.ints(1, 2)) for x in (w, u))  # [C, 1, 1]
    lags = np.where(below, lags, 0)  # a lag above the diagonal would overflow e^(-lag w) before the mask
    arg = g.op("Mul", g.const(lags), g.op("Neg", w_col))  # [C, L, L]
    # e^arg below the diagonal, exactly 0 where it would underflow (ORT's Exp is slow there);
    # masks by multiplication: ORT's broadcasting Where is ~10x slower than Mul
    keep = g.op("Cast", g.op("GreaterOrEqual", arg, g.const(DECAY_FLOOR)), to=FLOAT)
    decay = g.op("Mul", g.op("Exp", g.op("Max", arg, g.const(DECAY_FLOOR))), g.op("Mul", keep, g.const(below, np.float32)))
    d_mat_t = g.op("Add", decay, g.op("Mul", g.const(diag, np.float32), g.op("Exp", u_col)))  # [C, L(i), L(t)]
    return d_mat_t


def _gemm_body(g: Builder, w, T, u, k, v, aa, bb, pp, pre: str, chunk: int = 16) -> list[str]:
    """Chunks of L tokens, in-chunk sums as a MatMul scaled by the chunk's max k; else the scan body.

    Plain exponentials e^(k_i - k_max) are exact only while the chunk's k range is moderate; an If
    sends inputs past GEMM_MAX_RANGE to the (always stable) scan body.
    """
    _, _, _, t_col = _chunk_constants(chunk)
    ch = _Chunks(g, T, k, v, chunk, "edge")  # edge padding keeps each chunk's k range
    k_max = g.op("ReduceMax", ch.k, g.ints(2), keepdims=1)  # [B, nC, 1, C]
    k_range = g.op("Sub", k_max, g.op("ReduceMin", ch.k, g.ints(2), keepdims=1))
    worst = g.op("Add", g.op("ReduceMax", k_range, keepdims=0), g.op("ReduceMax", g.op("Abs", u), keepdims=0))
    fits = g.op("LessOrEqual", worst, g.const(GEMM_MAX_RANGE))

    fast = Builder("gm_")
    final, (aa_in, bb_in, pp_in) = _chunk_carry(fast, ch, w, aa, bb, pp)
    n, d = _gemm_rows(fast, ch, pre, k_max)
    # combine the chunk's rows (log scale k_max + log d) with the incoming state (pp_in - t w)
    log_rows = fast.op("Add", k_max, fast.op("Log", d))
    q = fast.op("Sub", pp_in, fast.op("Mul", fast.const(t_col), w))  # [B, nC, L, C]
    m = fast.op("Max", log_rows, q)
    e_rows, e_state = _exp_rel(fast, fast.op("Sub", log_rows, m)), _exp_rel(fast, fast.op("Sub", q, m))
    num = fast.op("Add", fast.op("Mul", fast.op("Div", n, d), e_rows), fast.op("Mul", e_state, aa_in))
    den = fast.op("Add", e_rows, fast.op("Mul", e_state, bb_in))
    fast_outs = [ch.to_sequence(fast, T, fast.op("Div", num, den)), *final]

    slow = Builder("gs_")
    slow_outs = _scan_body(slow, w, T, u, k, v, aa, bb, pp)
    branches = [_branch_graph(b, outs, name) for b, outs, name in ((fast, fast_outs, "gemm"), (slow, slow_outs, "scan"))]
    return g.ops("If", fits, outputs=4, then_branch=branches[0], else_branch=branches[1])


def _branch_graph(b: Builder, outs: list[str], name: str) -> onnx.GraphProto:
    """An If branch returning `outs` (renamed to fixed, unique output names)."""
    names = [f"{b.prefix}{name}_{n}" for n in OUTPUTS]
    for o, n in zip(outs, names):
        b.rename(o, n)
    return helper.make_graph(b.nodes, f"wkv4_{name}", [], float_inputs(names))


_BODIES: dict[str, Callable[..., list[str]]] = {"scan": _scan_body, "chunked": _chunked_body, "gemm": _gemm_body}
_BODY_WEIGHTS: dict[str, Callable[..., str]] = {"chunked": _chunked_weights, "gemm": _gemm_weights}


def nodes(op: str, body: str, chunk: int | None, single_step: bool = True) -> list[onnx.NodeProto]:
    """The function body of rwkv::WKV4 written as `body` (chunk: L of the chunked bodies), its outputs
    named as OUTPUTS. single_step: an If sends T == 1 straight to the one-token body, skipping the
    body's set-up. The caller (onnx_function.py) checks the arguments and restarts the names."""
    options = {} if chunk is None else {"chunk": chunk}
    d, u, k, v, aa, bb, pp = INPUTS
    g = Builder("wkv_")
    w = g.op("Exp", d)  # [C] decay rate
    T = g.op("Slice", g.op("Shape", k), g.ints(1), g.ints(2))  # [1]
    if body in _BODY_WEIGHTS:
        options["pre"] = _BODY_WEIGHTS[body](g, w, u, **options)
    if not single_step:
        outs = _BODIES[body](g, w, T, u, k, v, aa, bb, pp, **options)
    else:
        seq = Builder(f"{body}_")
        seq_outs = _BODIES[body](seq, w, T, u, k, v, aa, bb, pp, **options)
        names = [f"seq_out_{n}" for n in OUTPUTS]
        for o, n in zip(seq_outs, names):
            seq.rename(o, n)
        seq_graph = helper.make_graph(seq.nodes, f"wkv4_{body}", [], float_inputs(names))
        is_step = g.op("Equal", T, g.ints(1))
        then_graph = _step_graph(w, u, k, v, aa, bb, pp)
        outs = g.ops("If", is_step, outputs=4, then_branch=then_graph, else_branch=seq_graph)
    for o, n in zip(outs, OUTPUTS):
        g.rename(o, n)
    return g.nodes
