"""The ONNX function bodies of every WKV op (custom_ops/onnx_function.py and the per-op body modules)
against the float64 numpy oracles.

Every body of every op passes onnx.checker and carries the op's schema and plugin attributes. WKV4:
every body run by onnxruntime (CPU) and, on small shapes, by onnx.reference.ReferenceEvaluator, and
compared with `wkv4_numpy` in float64: y and all three state outputs, from the empty state
(pp = -1e38) and from random states, with ordinary and extreme (|k| ~ 60) keys, across chunk
boundaries, and over 4096 tokens. WKV5/6/7: ORT and onnx.reference on the standalone node + function
(chunked: T = 1 takes the scan branch; 7 and 13 pad a partial last chunk), extreme decays, float16
inputs.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from rwkv_export.errors import RwkvExportError
from rwkv_export.ops import wkv6, wkv7
from rwkv_export.ops.onnx_function import MIN_OPSET, wkv_function, wkv_model, wkv_node
from rwkv_export.ops.registry import DOMAIN, OPS, PLUGIN_NAMESPACE, PLUGIN_VERSION
from rwkv_export.ops.wkv4 import INPUTS, OUTPUTS, PP_INIT, wkv4_numpy
from tests.ops._wkv_cases import HEAD_OPS, onnx_inputs, run_numpy

FORMS = OPS["WKV4"].bodies
CHUNK_FORMS = tuple(OPS["WKV4"].chunks)  # chunked, gemm
BODIES = [(op, body) for op, spec in OPS.items() for body in spec.bodies]

# Error bound per output, norm-wise (max |got - ref| against max |ref|): RTOL, or 1.5x what the
# spec's own recurrence makes in float32 (wkv4_numpy, dtype=float32) where that is larger. The
# sequential float32 recurrence reaches ~2e-5 over 500 tokens and ~2e-4 with |k| ~ 60; the scan
# forms are that recurrence, the chunked forms round less (typically 10x below it).
RTOL, ATOL = 1e-5, 1e-7
F32_LOOP_FACTOR = 1.5


@functools.cache
def session(form: str, opset: int = MIN_OPSET, **options: object) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    model = wkv_model("WKV4", opset, form, **options).SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def make_inputs(
    B: int, T: int, C: int, state: str = "zero", k_scale: float = 3.0, k_shift: float = 0.0, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded float32 inputs in schema order. state: "zero" (aa = bb = 0, pp = -1e38) or "random"."""
    rng = np.random.default_rng(seed)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    time_decay = f32(rng.uniform(-6, 2.5, C))  # w from 0.0025 (long memory) to 12 (forget at once)
    time_first = f32(rng.uniform(-3, 3, C))
    k = f32(rng.uniform(-k_scale, k_scale, (B, T, C)) + k_shift)
    v = f32(rng.standard_normal((B, T, C)))
    if state == "zero":
        aa, bb, pp = np.zeros((B, C), np.float32), np.zeros((B, C), np.float32), np.full((B, C), PP_INIT, np.float32)
    else:
        aa, bb, pp = f32(rng.standard_normal((B, C))), f32(rng.uniform(0.5, 3, (B, C))), f32(rng.uniform(-20, 20, (B, C)))
    return dict(zip(INPUTS, (time_decay, time_first, k, v, aa, bb, pp)))


def assert_matches_oracle(got: list[np.ndarray], feeds: dict[str, np.ndarray], what: str) -> None:
    """Every output finite, float32, shaped as the oracle's and within the bound above."""
    ref = wkv4_numpy(**feeds)
    f32_loop = wkv4_numpy(**feeds, dtype=np.float32)
    failures = []
    for name, g, r, l32 in zip(OUTPUTS, got, ref, f32_loop):
        assert g.shape == r.shape and g.dtype == np.float32, f"{what} {name}: {g.shape} {g.dtype}, expected {r.shape} float32"
        scale = np.abs(r).max()
        err, loop_err = np.abs(g - r).max(), np.abs(l32 - r).max()
        bound = ATOL + max(RTOL * scale, F32_LOOP_FACTOR * loop_err)
        if not np.isfinite(g).all() or err > bound:
            failures.append(
                f"{name}: max abs {err:.3g} (rel {err / scale:.3g}) > bound {bound:.3g}; "
                f"float32 loop {loop_err:.3g}; finite {np.isfinite(g).all()}"
            )
    assert not failures, f"{what} vs float64 oracle: " + "; ".join(failures)


def run_ort(form: str, feeds: dict[str, np.ndarray], **options: object) -> list[np.ndarray]:
    return session(form, **options).run(None, feeds)


# --- structure ----------------------------------------------------------------------------


@pytest.mark.parametrize("op,body", BODIES)
def test_function_passes_checker(op: str, body: str) -> None:
    spec = OPS[op]
    fn = wkv_function(op, MIN_OPSET, body)
    onnx.checker.check_function(fn)
    assert (fn.domain, fn.name) == (DOMAIN, op)
    assert list(fn.input) == list(spec.inputs) and list(fn.output) == list(spec.outputs)
    assert {o.domain: o.version for o in fn.opset_import} == {"": MIN_OPSET}
    assert list(fn.attribute) == ["plugin_namespace", "plugin_version"]
    assert all(n.domain in ("", "ai.onnx") for n in fn.node), "the body must use standard ops only"


@pytest.mark.parametrize("opset", [18, 20, 23])
@pytest.mark.parametrize("form", FORMS)
def test_model_passes_full_check_and_loads(form: str, opset: int) -> None:
    model = wkv_model("WKV4", opset, form)
    onnx.checker.check_model(model, full_check=True)
    feeds = make_inputs(2, 5, 8, "random")
    assert_matches_oracle(run_ort(form, feeds, opset=opset), feeds, f"ORT {form} opset {opset}")


@pytest.mark.parametrize("op", OPS)
def test_node_carries_plugin_attributes(op: str) -> None:
    node = wkv_node(op, OPS[op].inputs, OPS[op].outputs, "blocks.0.att.wkv")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.domain, node.op_type) == (DOMAIN, op)
    assert attrs == {"plugin_namespace": PLUGIN_NAMESPACE.encode(), "plugin_version": PLUGIN_VERSION.encode()}


@pytest.mark.parametrize(
    "args, message",
    [(dict(body="nope"), "unknown form"), (dict(opset=17), "opset 17"), (dict(body="chunked", chunk=0), "positive int"),
     (dict(body="scan", chunk=8), "unknown options"), (dict(op="WKV7", body="chunked"), "WKV7 ONNX body: no chunked form"),
     (dict(op="WKV9"), "unknown WKV op")],
)  # fmt: skip
def test_bad_arguments_raise_one_error(args: dict, message: str) -> None:
    args = {"op": "WKV4", "opset": MIN_OPSET} | args
    with pytest.raises(RwkvExportError, match=message):
        wkv_function(**args)


# --- numerics -----------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["zero", "random"])
@pytest.mark.parametrize("C", [8, 96])
@pytest.mark.parametrize("T", [1, 7, 64, 513])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("form", FORMS)
def test_ort_matches_oracle(form: str, B: int, T: int, C: int, state: str) -> None:
    feeds = make_inputs(B, T, C, state, seed=B * 1000 + T + C)
    assert_matches_oracle(run_ort(form, feeds), feeds, f"ORT {form} B={B} T={T} C={C} state={state}")


@pytest.mark.parametrize("state", ["zero", "random"])
@pytest.mark.parametrize("form", FORMS)
def test_extreme_keys(form: str, state: str) -> None:
    """|k| up to 60 with mixed signs: past the gemm form's range limit, so it takes its fallback."""
    feeds = make_inputs(2, 300, 16, state, k_scale=60.0, seed=7)
    assert_matches_oracle(run_ort(form, feeds), feeds, f"ORT {form} |k|<=60")


@pytest.mark.parametrize("form", FORMS)
def test_large_keys_within_gemm_range(form: str) -> None:
    """k in [30, 90]: large magnitudes but a 60-wide range, so the gemm form keeps its MatMul path."""
    feeds = make_inputs(2, 300, 16, "random", k_scale=30.0, k_shift=60.0, seed=8)
    assert_matches_oracle(run_ort(form, feeds), feeds, f"ORT {form} k in [30, 90]")


@pytest.mark.parametrize("form", FORMS)
def test_long_sequence_stays_stable(form: str) -> None:
    feeds = make_inputs(1, 4096, 8, "zero", k_scale=60.0, seed=9)
    assert_matches_oracle(run_ort(form, feeds), feeds, f"ORT {form} T=4096 |k|<=60")


@pytest.mark.parametrize("single_step", [True, False])
@pytest.mark.parametrize("offset", [-1, 0, 1, 5])
@pytest.mark.parametrize("form", CHUNK_FORMS)
def test_chunk_boundaries(form: str, offset: int, single_step: bool) -> None:
    chunk = 8
    T = max(1, chunk + offset) if offset != 5 else 2 * chunk + 1
    feeds = make_inputs(2, T, 8, "random", seed=T)
    got = run_ort(form, feeds, chunk=chunk, single_step=single_step)
    assert_matches_oracle(got, feeds, f"ORT {form} L={chunk} T={T} single_step={single_step}")


@pytest.mark.parametrize("T", [1, 5, 9])
@pytest.mark.parametrize("form", FORMS)
def test_reference_evaluator_matches_oracle(form: str, T: int) -> None:
    options = {"chunk": 4} if form in CHUNK_FORMS else {}
    model = wkv_model("WKV4", MIN_OPSET, form, **options)
    for state in ("zero", "random"):
        feeds = make_inputs(2, T, 4, state, seed=T)
        got = list(ReferenceEvaluator(model).run(None, feeds))
        assert_matches_oracle(got, feeds, f"ReferenceEvaluator {form} T={T} state={state}")


# --- WKV5, WKV6, WKV7 ------------------------------------------------------------------------------


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


FORM_CASES = [(op, "scan", None) for op in HEAD_OPS] + [
    (op, "chunked", L) for op in HEAD_OPS if "chunked" in OPS[op].bodies for L in (3, 4)
]


@pytest.mark.parametrize("op,form,chunk", FORM_CASES)
@pytest.mark.parametrize("T", [1, 7, 13])
def test_head_function_matches_numpy(op: str, form: str, chunk: int | None, T: int) -> None:
    """ORT and onnx.reference on the standalone node + function against the float64 numpy op
    (chunked: T = 1 takes the scan branch; 7 and 13 pad a partial last chunk)."""
    onnx.checker.check_function(wkv_function(op, 18, form, chunk))
    model = wkv_model(op, body=form, chunk=chunk)
    onnx.checker.check_model(model, full_check=True)
    feeds = onnx_inputs(op, 2, T, 3, 8, seed=T)
    y_ref, s_ref = run_numpy(op, {n: feeds[n] for n in OPS[op].inputs})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, run in (("onnxruntime", session.run), ("onnx.reference", ReferenceEvaluator(model).run)):
        y, s = run(None, feeds)
        assert y.dtype == np.float32 and y.shape == (2, T, 3, 8) and s.shape == (2, 3, 8, 8), f"{name} {op}: {y.shape} {s.shape}"
        assert _rel(y, y_ref) < 1e-6 and _rel(s, s_ref) < 1e-6, (
            f"{name} {op} {form} T={T}: y rel {_rel(y, y_ref):.2e}, state {_rel(s, s_ref):.2e}"
        )


@pytest.mark.parametrize("low,high", [(-9.0, -6.0), (2.0, 4.0), (-9.0, 4.0)])
def test_head_chunked_body_at_extreme_decays(low: float, high: float) -> None:
    """w near 1 (w_raw -9) and w ~ e^-50 (w_raw 4), where the chunk's factors underflow: 1e-5 of the oracle."""
    session = ort.InferenceSession(wkv_model("WKV6", body="chunked").SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = onnx_inputs("WKV6", 2, 37, 3, 8, seed=1)
    feeds["w_raw"] = np.random.default_rng(0).uniform(low, high, feeds["w_raw"].shape).astype(np.float32)
    y, s = session.run(None, feeds)
    y_ref, s_ref = wkv6.wkv6_numpy(*(feeds[n] for n in wkv6.INPUTS))
    assert _rel(y, y_ref) < 1e-5 and _rel(s, s_ref) < 1e-5, (
        f"chunked WKV6, w_raw in [{low}, {high}]: y {_rel(y, y_ref):.2e}, state {_rel(s, s_ref):.2e}"
    )


def test_head_function_accepts_float16_inputs() -> None:
    """The op's contract: r, k, v (, a, b) may be float16; the math and outputs stay float32."""
    model = wkv_model("WKV7")
    for value in model.graph.input:
        if value.name in ("r", "k", "v", "a", "b"):
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    feeds = onnx_inputs("WKV7", 1, 5, 2, 8, seed=3)
    half = {n: (x.astype(np.float16) if n in ("r", "k", "v", "a", "b") else x) for n, x in feeds.items()}
    y, s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, half)
    y_ref, s_ref = wkv7.wkv7_numpy(*(half[n] for n in wkv7.INPUTS))
    assert y.dtype == np.float32 and _rel(y, y_ref) < 1e-6 and _rel(s, s_ref) < 1e-6
