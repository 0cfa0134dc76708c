"""rwkv::WKV5, rwkv::WKV6 and rwkv::WKV7 as model-local ONNX functions in standard ONNX ops.

As for WKV4 (custom_ops/wkv4_onnx.py), the exporter emits one custom node per layer carrying the
TensorRT plugin attributes (`plugin_namespace="rwkv"`, `plugin_version="1"`) and ships the op's
FunctionProto in `model.functions`, so onnxruntime and `onnx.reference.ReferenceEvaluator` run
the file without a custom-op library. The math is the sequential recurrence that defines each op
(custom_ops/wkv5.py, wkv6.py, wkv7.py), written as an ONNX Scan over T, one token per iteration,
with the matrix state S [B, H, N, N] as the carried value:

    WKV5/6 (key-major S[i=k, j=v]):  y_j = sum_i r_i u_i k_i v_j + sum_i r_i S_ij
                                     S_ij <- w_i S_ij + k_i v_j
    WKV7   (value-major S[i=v, j=k]): sa_i = sum_j S_ij a_j
                                     S_ij <- S_ij w_j + sa_i b_j + v_i k_j;  y_i = sum_j S_ij r_j
with w = exp(-exp(w_raw)) computed once per call in float32, outside the loop (WKV5: one [H, N]
decay; WKV6/7: [B, T, H, N], batched before the Scan).

Forms:
- ``scan`` (every op; WKV7's default): the Scan over T above, 4 (WKV5/6) / 6 (WKV7) ops a token.
- ``chunked`` (WKV5, WKV6; their default): T cut into chunks of L tokens (the last padded with r = k = v = 0 and
  w = 1, which leave y and S unchanged). With c the cumulative log decay within a chunk (c_ex
  exclusive, c_in inclusive, c_L the chunk's total), every factor below is e^(<= 0):
      y_t   = (r_t e^c_ex_t) S_in + sum_{s<t} [sum_i r_t,i k_s,i e^(c_ex_t,i - c_in_s,i)] v_s + (r_t.u.k_t) v_t
      S_out = e^c_L S_in + sum_s (k_s e^(c_L - c_in_s)) (x) v_s
  The intra-chunk part ([L, L, N] factors per head) is computed for all chunks at once; a Scan over
  the T / L chunks carries S with two MatMuls. Exp arguments are clamped at -60 (ORT's Exp is ~15x
  slower on arguments that underflow; e^-60 is far below float32 rounding of the sums). T == 1 (every
  step graph) goes through an If to the scan form.

No chunked WKV7: its delta rule (S feeds back through a) chunks through a UT transform (within a
chunk, h_t = S_{t-1} a_t solves a unit lower-triangular system; S_L = S_0 F + C). Built and
measured on ORT CPU (B = 1, H = 12, N = 64), it was 1.6-6x slower than the scan form (T = 512: 57 /
80 / 165 ms at L = 8 / 16 / 32 against 28 ms): the chunk's transition S_0 F alone costs N^3 per
chunk, no less than the scan's per-token rank-2 updates, and the pairwise [L, L, N] decay factors
come on top. Not kept.

Inputs may be float16 (the op's contract): r, k, v (, a, b) are cast to float32 at the top of the
body; the exporter's own graphs already feed float32, where ORT drops the casts.

Tensors are transposed to [T, B, H, N] and scanned along axis 0: onnx.reference's Scan supports
axis 0 only, and ORT transposes for another axis anyway. Axis constants of the body are created in
the function's scope (the body reads them from the outer scope: no Constant op per token).

Measured (`python benchmarks/bench_matrix_forms.py --seqs 1,64,512`: ORT 1.32 CPU, 1 thread, this
project's 2-core VM; B = 1, H = 12, N = 64, i.e. a 768-wide layer; fastest of 7 runs, ms; y within
2.3e-7 of the float64 oracle relative to max |y| in every row):
                 T = 1    T = 64   T = 512
    WKV5 scan    0.078    5.11     28.4
    WKV5 chunked 0.088    1.77     15.6     (L = 4)
    WKV6 scan    0.080    3.34     27.3
    WKV6 chunked 0.086    1.73     16.1     (L = 4)
    WKV7 scan    0.078    3.44     28.9
  The scan bodies keep only state-dependent ops in the loop (4 for WKV5/6, 6 for WKV7; before,
  12 and 14 ops ran per token: WKV7 took 58.0 ms at T = 512, WKV6 31.8). `chunked` is 1.7-2.9x the
  scan form from T = 64 on and equally accurate, so it is WKV5/6's default (DEFAULT_FORMS); T = 1
  takes the scan form through the If.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from rwkv_export.ops import MATRIX_OPS
from rwkv_export.ops.wkv4 import PLUGIN_NAMESPACE, PLUGIN_VERSION
from rwkv_export.ops.wkv4_onnx import EXP_FLOOR, MIN_OPSET, PLUGIN_ATTRIBUTES, _Builder, _float_inputs
from rwkv_export.errors import RwkvExportError

DOMAIN = "rwkv"
DOMAIN_VERSION = 1
SCHEMAS = MATRIX_OPS  # op type -> the module holding INPUTS, OUTPUTS
FORMS = ("scan", "chunked")
# chunked where it exists: 1.7-2.9x the scan form from T = 64 on (bench_matrix_forms.py), 1.26x on a
# whole 169M-like RWKV-6 prefill of 128 tokens; T == 1 (every step graph) takes the scan form anyway.
DEFAULT_FORMS = {"WKV5": "chunked", "WKV6": "chunked", "WKV7": "scan"}
CHUNKED_OPS = ("WKV5", "WKV6")  # WKV7: see "No chunked WKV7" in the module docstring
DEFAULT_CHUNKS = {"WKV5": 4, "WKV6": 4}  # L of the chunked form, measured fastest (module docstring)

_FLOAT = TensorProto.FLOAT
_SEQ_FIRST = [1, 0, 2, 3, 4]  # [B, T, H, *, *] <-> [T, B, H, *, *]


class _Axes:
    """int64 axis constants [-1] and [-2], built once in the function scope."""

    def __init__(self, g: _Builder):
        self.last, self.second_last = g.ints(-1), g.ints(-2)


def _to_float(g: _Builder, x: str) -> str:
    return g.op("Cast", x, to=_FLOAT)


def _decay(g: _Builder, w_raw: str) -> str:
    """w = exp(-exp(w_raw)) in float32 (never float16: a w near 1 would round to 1)."""
    return g.op("Exp", g.op("Neg", g.op("Exp", _to_float(g, w_raw))))


def _scan(g: _Builder, op: str, body: _Builder, state_in: str, carried: str, scanned: dict[str, str],
          y: str, state_out: str) -> tuple[str, str]:
    """Run `body` as a Scan: `carried` is the body's state input name, `scanned` maps the body's
    per-token input names to outer 5-D tensors [B, T, H, *, *] (already shaped as the body uses
    them: rows, columns). Returns (y [B, T, H, *, *] as the body's y per token, state_out)."""
    outs = [f"{body.prefix}state_out", f"{body.prefix}y"]
    body.rename(state_out, outs[0])
    body.rename(y, outs[1])
    graph = helper.make_graph(body.nodes, f"{op.lower()}_scan_body", _float_inputs([carried, *scanned]), _float_inputs(outs))
    seq = [g.op("Transpose", x, perm=_SEQ_FIRST) for x in scanned.values()]
    s_out, ys = g.ops("Scan", state_in, *seq, outputs=2, body=graph, num_scan_inputs=len(seq))
    return g.op("Transpose", ys, perm=_SEQ_FIRST), s_out


# --- the per-token bodies -------------------------------------------------------------------------
# Only the state-dependent work runs per token: every reshape of the inputs and every term that
# does not read S (WKV5/6's bonus, WKV7's b and k stacked for one rank-2 update) is computed once
# for all T outside the loop. ORT's cost per Scan iteration is mostly per op, so the bodies are as
# few ops as the math allows: 4 for WKV5/6 (12 before), 6 for WKV7 (14 before).


def _wkv56_body(decay: str | None) -> tuple[_Builder, str, list[str], str, str]:
    """WKV5/6 token: S [B, H, N(k), N(v)]; r_row, v_row [B, H, 1, N]; k_col (, w_col) [B, H, N, 1].

    decay: WKV5's [H, N, 1] decay from the outer scope; None (WKV6) scans a per-token w_col.
    Returns y_read [B, H, 1, N] = sum_i r_i S_ij; the caller adds the bonus (r.u.k) v outside.
    """
    b = _Builder("t_")
    S, r, k, v, w = "t_S", "t_r", "t_k", "t_v", "t_w"
    read = b.op("MatMul", r, S)  # [B, H, 1, N]: sum_i r_i S_ij
    new_S = b.op("Add", b.op("Mul", decay if decay is not None else w, S), b.op("Mul", k, v))  # w_i S_ij + k_i v_j
    names = [r, k, v] if decay is not None else [r, k, v, w]
    return b, S, names, read, new_S


def _wkv7_body() -> tuple[_Builder, str, list[str], str, str]:
    """WKV7 token: S [B, H, N(v), N(k)]; r_col, a_col, v_col [B, H, N, 1]; w_row [B, H, 1, N];
    bk [B, H, 2, N] (rows b and k): S <- S w + [S a, v] @ [b; k], y = S r (the updated S)."""
    g = _Builder("t_")
    S, r, w, a, v, bk = "t_S", "t_r", "t_w", "t_a", "t_v", "t_bk"
    sa_v = g.op("Concat", g.op("MatMul", S, a), v, axis=-1)  # [B, H, N, 2]: (sum_j S_ij a_j, v_i)
    new_S = g.op("Add", g.op("Mul", S, w), g.op("MatMul", sa_v, bk))  # S_ij w_j + sa_i b_j + v_i k_j
    y = g.op("MatMul", new_S, r)  # [B, H, N, 1]: sum_j S_ij r_j
    return g, S, [r, w, a, v, bk], y, new_S


# --- functions ----------------------------------------------------------------------------------


def _scan56(g: _Builder, op: str, ax: _Axes, r: str, k: str, v: str, w_raw: str, u: str, state_in: str) -> tuple[str, str]:
    """The scan form of WKV5/6 in builder `g`: (y [B, T, H, N], state_out)."""
    w = _decay(g, w_raw)
    row = lambda x: g.op("Unsqueeze", x, ax.second_last)  # noqa: E731  [..., 1, N]
    col = lambda x: g.op("Unsqueeze", x, ax.last)  # noqa: E731  [..., N, 1]
    if op == "WKV5":  # one decay [H, N] for every token: a column [H, N, 1] read from the outer scope
        body, S, names, y, new_S = _wkv56_body(col(w))
        scanned = dict(zip(names, (row(r), col(k), row(v))))
    else:
        body, S, names, y, new_S = _wkv56_body(None)
        scanned = dict(zip(names, (row(r), col(k), row(v), col(w))))
    read, s_out = _scan(g, op, body, state_in, S, scanned, y, new_S)
    bonus = g.op("Mul", g.op("ReduceSum", g.op("Mul", g.op("Mul", r, u), k), ax.last, keepdims=1), v)  # (r.u.k) v, all T
    return g.op("Add", bonus, g.op("Squeeze", read, ax.second_last)), s_out


def _chunked56(g: _Builder, op: str, r: str, k: str, v: str, w_raw: str, u: str, state_in: str, L: int) -> tuple[str, str]:
    """The chunked form of WKV5/6 in builder `g`: (y [B, T, H, N], state_out); see the module docstring.

    Per chunk of L tokens, with c the cumulative log decay over the chunk (exclusive: c_ex, inclusive:
    c_in, total: c_L), every factor is e^(<= 0):
        y_t   = (r_t e^c_ex_t) S_in + sum_{s<t} [sum_i r_t,i k_s,i e^(c_ex_t,i - c_in_s,i)] v_s + (r_t.u.k_t) v_t
        S_out = e^c_L S_in + sum_s (k_s e^(c_L - c_in_s)) (x) v_s
    The pairwise [L, L, N] factors are built for all chunks at once; a Scan over chunks carries S.
    """
    c = _Builder(g.prefix + "c")
    shape = c.op("Shape", k)
    B, T, H, N = (c.op("Slice", shape, c.ints(a), c.ints(a + 1)) for a in range(4))
    n_chunks = c.op("Div", c.op("Add", T, c.ints(L - 1)), c.ints(L))
    pads = c.op("Concat", c.ints(0, 0, 0, 0, 0), c.op("Sub", c.op("Mul", n_chunks, c.ints(L)), T), c.ints(0, 0), axis=0)
    log_w = c.op("Neg", c.op("Exp", _to_float(c, w_raw)))  # log w <= 0, float32
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
    body = _Builder(g.prefix + "cb_")
    S, r_i, k_i, v_i, d_i = (f"{body.prefix}{n}" for n in ("S", "r", "k", "v", "d"))
    y_inter = body.op("MatMul", r_i, S)  # [B, H, L, N]
    new_S = body.op("Add", body.op("Mul", d_i, S), body.op("MatMul", k_i, v_i))
    outs = [f"{body.prefix}S_out", f"{body.prefix}y"]
    body.rename(new_S, outs[0])
    body.rename(y_inter, outs[1])
    graph = helper.make_graph(body.nodes, f"{op.lower()}_chunk_carry", _float_inputs([S, r_i, k_i, v_i, d_i]), _float_inputs(outs))
    s_out, y_inter = c.ops("Scan", state_in, r_dec, k_dec_t, v, s_dec, outputs=2, body=graph, num_scan_inputs=4)
    y = c.op("Transpose", c.op("Add", y_intra, y_inter), perm=[1, 0, 3, 2, 4])  # [B, nC, L, H, N]
    y = c.op("Slice", c.op("Reshape", y, c.op("Concat", B, c.ints(-1), H, N, axis=0)), c.ints(0), T, c.ints(1))
    g.nodes += c.nodes
    return y, s_out


def _wkv56(op: str, form: str, chunk: int) -> _Builder:
    r, k, v, w_raw, u, state_in = SCHEMAS[op].INPUTS
    g = _Builder(f"{op.lower()}_")
    ax = _Axes(g)
    r32, k32, v32 = (_to_float(g, x) for x in (r, k, v))
    u32 = _to_float(g, u)
    if form == "scan":
        y_out, s_out = _scan56(g, op, ax, r32, k32, v32, w_raw, u32, state_in)
    else:
        y_out, s_out = _if_single_token(g, op, k32, lambda bld: _scan56(bld, op, ax, r32, k32, v32, w_raw, u32, state_in),
                                        lambda bld: _chunked56(bld, op, r32, k32, v32, w_raw, u32, state_in, chunk))
    g.rename(y_out, "y")
    g.rename(s_out, "state_out")
    return g


def _scan7(g: _Builder, ax: _Axes, r: str, w_raw: str, k: str, v: str, a: str, b: str, state_in: str) -> tuple[str, str]:
    """The scan form of WKV7 in builder `g`: (y [B, T, H, N], state_out)."""
    row = lambda x: g.op("Unsqueeze", x, ax.second_last)  # noqa: E731  [B, T, H, 1, N]
    col = lambda x: g.op("Unsqueeze", x, ax.last)  # noqa: E731  [B, T, H, N, 1]
    outer = [col(r), row(_decay(g, w_raw)), col(a), col(v), g.op("Concat", row(b), row(k), axis=-2)]
    body, S, names, y, new_S = _wkv7_body()
    y5, s_out = _scan(g, "WKV7", body, state_in, S, dict(zip(names, outer)), y, new_S)
    return g.op("Squeeze", y5, ax.last), s_out


def _wkv7() -> _Builder:
    r, w_raw, k, v, a, b, state_in = SCHEMAS["WKV7"].INPUTS
    g = _Builder("wkv7_")
    ax = _Axes(g)
    r32, k32, v32, a32, b32 = (_to_float(g, x) for x in (r, k, v, a, b))
    y_out, s_out = _scan7(g, ax, r32, w_raw, k32, v32, a32, b32, state_in)
    g.rename(y_out, "y")
    g.rename(s_out, "state_out")
    return g


def _if_single_token(g: _Builder, op: str, k: str, scan, chunked) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """T == 1 (every step graph) takes the scan form, longer inputs the chunked one: an If."""
    branches = []
    for name, build in (("scan", scan), ("chunked", chunked)):
        b = _Builder(f"{op.lower()}_{name}_")
        names = [f"{b.prefix}y", f"{b.prefix}state_out"]
        for o, n in zip(build(b), names):
            b.rename(o, n)
        branches.append(helper.make_graph(b.nodes, f"{op.lower()}_{name}", [], _float_inputs(names)))
    T = g.op("Slice", g.op("Shape", k), g.ints(1), g.ints(2))
    return g.ops("If", g.op("Equal", T, g.ints(1)), outputs=2, then_branch=branches[0], else_branch=branches[1])


def _check(op: str, opset: int, form: str, chunk: int) -> None:
    if op not in SCHEMAS:
        raise RwkvExportError(f"unknown matrix WKV op {op!r}; expected one of {tuple(SCHEMAS)}")
    if form not in FORMS:
        raise RwkvExportError(f"{op} ONNX body: unknown form {form!r}; expected one of {FORMS}")
    if form == "chunked" and op not in CHUNKED_OPS:
        raise RwkvExportError(f"{op} ONNX body: no chunked form (only {', '.join(CHUNKED_OPS)}); use scan")
    if not isinstance(chunk, int) or chunk < 1:
        raise RwkvExportError(f"{op} chunked form: chunk must be a positive int, got {chunk!r}")
    if int(opset) < MIN_OPSET:
        raise RwkvExportError(f"{op} ONNX body: opset {opset} < {MIN_OPSET}; export with opset >= {MIN_OPSET}")


def wkv_matrix_function(op: str, opset: int, form: str | None = None, chunk: int | None = None) -> onnx.FunctionProto:
    """The FunctionProto `rwkv::<op>` (op: WKV5, WKV6 or WKV7) for a model of default-domain `opset`.

    form: scan (every op) or chunked (WKV5 / WKV6; chunk = L tokens; T == 1 runs the scan form);
    None: the op's DEFAULT_FORMS entry."""
    form = form or DEFAULT_FORMS.get(op, "scan")
    chunk = chunk or DEFAULT_CHUNKS.get(op, 4)
    _check(op, opset, form, chunk)
    _Builder.restart_names()
    g = _wkv7() if op == "WKV7" else _wkv56(op, form, chunk)
    schema = SCHEMAS[op]
    return helper.make_function(
        DOMAIN, op, list(schema.INPUTS), list(schema.OUTPUTS), g.nodes,
        opset_imports=[helper.make_opsetid("", int(opset))],
        attributes=list(PLUGIN_ATTRIBUTES), doc_string=f"{op}, form {form!r}, state {schema.STATE_LAYOUT}",
    )  # fmt: skip


def wkv_matrix_node(op: str, inputs, outputs, name: str) -> onnx.NodeProto:
    """One `rwkv::<op>` node with the TensorRT plugin attributes (namespace, version)."""
    return helper.make_node(
        op, list(inputs), list(outputs), name=name, domain=DOMAIN,
        plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION,
    )  # fmt: skip


def wkv_matrix_model(op: str, opset: int = MIN_OPSET, form: str | None = None, chunk: int | None = None) -> onnx.ModelProto:
    """A standalone model of one node and its function (for tests and benches); every input is a
    graph input, B, T, H, N dynamic (WKV5's w_raw and u are [H, N])."""
    schema = SCHEMAS[op]
    dims = {"w_raw": ["H", "N"], "u": ["H", "N"]} if op == "WKV5" else {"u": ["H", "N"]}
    dims |= {"state_in": ["B", "H", "N", "N"], "state_out": ["B", "H", "N", "N"]}
    io = lambda n: helper.make_tensor_value_info(n, _FLOAT, dims.get(n, ["B", "T", "H", "N"]))  # noqa: E731
    graph = helper.make_graph([wkv_matrix_node(op, schema.INPUTS, schema.OUTPUTS, op.lower())], op.lower(),
                              [io(n) for n in schema.INPUTS], [io(n) for n in schema.OUTPUTS])
    return helper.make_model(
        graph, functions=[wkv_matrix_function(op, opset, form, chunk)],
        opset_imports=[helper.make_opsetid("", int(opset)), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
    )  # fmt: skip


def random_inputs(op: str, B: int, T: int, H: int, N: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 inputs of plausible size for `op` (tests and benches).

    w_raw in [-3, 1] (decays from ~0.95 to ~0.07); WKV7's a = -kk and b = kk * sigma(.) with kk a
    unit vector per head, as the model calls it (the state stays bounded over long T).
    """
    rng = np.random.default_rng(seed)

    def f(*shape: int) -> np.ndarray:
        return np.asarray(rng.standard_normal(shape), np.float32)

    x = {n: f(B, T, H, N) for n in ("r", "k", "v")}
    state = (f(B, H, N, N) * 0.5).astype(np.float32)
    if op == "WKV7":
        kk = f(B, T, H, N)
        kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
        gate = 1 / (1 + np.exp(-f(B, T, H, N)))
        w_raw = (-np.log1p(np.exp(-f(B, T, H, N))) - 0.5).astype(np.float32)
        return {"r": x["r"], "w_raw": w_raw, "k": x["k"] * 0.5, "v": x["v"], "a": -kk, "b": (kk * gate).astype(np.float32),
                "state_in": state}
    w_shape = (H, N) if op == "WKV5" else (B, T, H, N)
    w_raw = rng.uniform(-3, 1, w_shape).astype(np.float32)
    return {**x, "w_raw": w_raw, "u": f(H, N), "state_in": state}
