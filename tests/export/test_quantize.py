"""export --quantize: quantized graphs against a numpy dequantize-then-matmul of the same stored weights,
round-to-nearest error bounds, the per-role policy, one-line errors, and a tiny trained model end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from rwkv_export.cli import cli
from rwkv_export.errors import RwkvExportError
from rwkv_export.export.quantize import QuantSpec, classify_matmuls, quantize_graph
from tests.conftest import SHARED, requires_shared, tiny_model

K, N, N_EMBD = 64, 96, 64


def _graph(weights: dict[str, np.ndarray], gemm: bool = False) -> onnx.ModelProto:
    """x [B, K] -> lin (MatMul or Gemm transB) -> lora_a [K, 16] -> lora_b [16, K] -> head -> logits."""
    nodes = [
        helper.make_node("Gemm", ["x", "w_lin_t"], ["h"], name="lin", transB=1)
        if gemm
        else helper.make_node("MatMul", ["x", "w_lin"], ["h"], name="lin"),
        helper.make_node("MatMul", ["x", "w_a"], ["la"], name="lora_a"),
        helper.make_node("MatMul", ["la", "w_b"], ["lb"], name="lora_b"),
        helper.make_node("Concat", ["h", "lb"], ["hc"], name="cat", axis=1),
        helper.make_node("MatMul", ["hc", "w_head"], ["logits"], name="head"),
    ]
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(weights["w_lin"].T) if gemm else weights["w_lin"], "w_lin_t" if gemm else "w_lin")
    ]
    inits += [numpy_helper.from_array(weights[n], n) for n in ("w_a", "w_b", "w_head")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 32])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w_lin": rng.standard_normal((K, N)).astype(np.float32),
        "w_a": rng.standard_normal((K, 16)).astype(np.float32),
        "w_b": rng.standard_normal((16, K)).astype(np.float32),
        "w_head": rng.standard_normal((N + K, 32)).astype(np.float32),
    }


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """uint8 -> its two 4-bit values, low nibble first (ONNX's and MatMulNBits' order)."""
    return np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)


def _dequant_nbits(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> np.ndarray:
    """MatMulNBits' documented layout: B [N, blocks, blob], scales [N * blocks], zero points per block
    (packed like B at 4 bits; default 2^(bits-1) when absent); W[k, n] = (q - zp) * scale."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, bs = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    blocks = k // bs
    packed = inits[node.input[1]].reshape(n, blocks, -1)
    q = (_nibbles(packed) if bits == 4 else packed).reshape(n, blocks, bs).astype(np.float64)
    scales = inits[node.input[2]].reshape(n, blocks, 1).astype(np.float64)
    if len(node.input) > 3:
        zp = inits[node.input[3]].reshape(n, -1)
        zp = (_nibbles(zp)[:, :blocks] if bits == 4 else zp).reshape(n, blocks, 1).astype(np.float64)
    else:
        zp = 2.0 ** (bits - 1)
    return ((q - zp) * scales).reshape(n, k).T


def _dequant_qdq(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> np.ndarray:
    """Blocked DequantizeLinear (axis 0): W[k, n] = (q[k, n] - zp[k // bs, n]) * scale[k // bs, n]."""
    bs = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "block_size")
    q = inits[node.input[0]].astype(np.float64)
    scale = np.repeat(inits[node.input[1]].astype(np.float64), bs, axis=0)
    zp = np.repeat(inits[node.input[2]].astype(np.float64), bs, axis=0) if len(node.input) > 2 else 0.0
    return (q - zp) * scale


def _dequantized(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Original node name -> the float weight its quantized form stands for, read from the stored tensors."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            out[node.name.rsplit("_Q", 1)[0]] = _dequant_nbits(node, inits)
        elif node.op_type == "DequantizeLinear":
            out[node.name.rsplit("_DQ_Q", 1)[0]] = _dequant_qdq(node, inits)
    return out


def _reference(weights: dict[str, np.ndarray], x: np.ndarray, deq: dict[str, np.ndarray]) -> np.ndarray:
    w = {"lin": weights["w_lin"], "lora_a": weights["w_a"], "lora_b": weights["w_b"], "head": weights["w_head"]}
    w = {name: deq.get(name, value).astype(np.float64) for name, value in w.items()}
    x = x.astype(np.float64)
    return np.concatenate([x @ w["lin"], (x @ w["lora_a"]) @ w["lora_b"]], axis=1) @ w["head"]


CASES = [(s, f, sym) for s in ("int8", "int4") for f in ("matmulnbits", "qdq") for sym in (True, False)]


@pytest.mark.parametrize(("scheme", "fmt", "symmetric"), CASES)
@pytest.mark.parametrize("gemm", [False, True])
def test_quantized_graph_is_dequantize_then_matmul(scheme: str, fmt: str, symmetric: bool, gemm: bool) -> None:
    weights = _weights()
    model = _graph(weights, gemm)
    spec = QuantSpec(scheme, 16, symmetric, fmt, (("lora", "float"),), accuracy_level=0)  # 0: float32 activations
    info = quantize_graph(model, spec, N_EMBD)
    assert info["roles"] == {"matrix": {scheme: 1}, "lora": {"float": 2}, "head": {scheme: 1}, "embedding": {}}
    deq = _dequantized(model)
    assert sorted(deq) == ["head", "lin"]
    # round to nearest: asymmetric blocks within half a step (span / (2^bits - 1)); symmetric blocks within one
    # step of absmax / 2^(bits-1) (ORT maps the block's signed extreme to -2^(bits-1), so the other extreme can clip)
    bits = 8 if scheme == "int8" else 4
    for name, original in (("lin", weights["w_lin"]), ("head", weights["w_head"])):
        blocks = original.reshape(-1, 16, original.shape[1]).astype(np.float64)
        if symmetric:
            bound = np.abs(blocks).max(1) / 2 ** (bits - 1)
        else:
            bound = 0.5 * (np.maximum(blocks.max(1), 0) - np.minimum(blocks.min(1), 0)) / (2**bits - 1)
        err = np.abs(deq[name] - original)
        assert np.all(err <= np.repeat(bound, 16, axis=0) * (1 + 1e-5) + 1e-7), name
        assert err.mean() > 0.1 * bound.mean()  # really rounded, not stored exactly
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32)
    # ORT_ENABLE_ALL fuses an 8-bit DequantizeLinear -> MatMul into a kernel that rounds the activations to
    # int8 too (0.4% off): qdq graphs are run as written (basic level; TensorRT is their target), and by onnx.reference
    options = ort.SessionOptions()
    if fmt == "qdq":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    got = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = _reference(weights, x, deq)
    assert np.max(np.abs(got - want)) <= 2e-5 * np.max(np.abs(want))
    if fmt == "qdq":
        from onnx.reference import ReferenceEvaluator

        assert np.max(np.abs(ReferenceEvaluator(model).run(None, {"x": x})[0] - want)) <= 2e-5 * np.max(np.abs(want))
    if fmt == "matmulnbits":  # the default accuracy level 4 rounds activations to int8 per block inside the kernel
        fast = _graph(weights, gemm)
        quantize_graph(fast, QuantSpec(scheme, 16, symmetric, fmt, (("lora", "float"),)), N_EMBD)
        assert all(a.i == 4 for n in fast.graph.node for a in n.attribute if a.name == "accuracy_level")
        got4 = ort.InferenceSession(fast.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert 1e-6 * np.max(np.abs(want)) < np.max(np.abs(got4 - want)) <= 2e-2 * np.max(np.abs(want))
    plain = _reference(weights, x, {})
    assert np.max(np.abs(got - plain)) > 1e-4 * np.max(np.abs(plain))  # the weights really are quantized
    fp32 = 4 * (K * N + weights["w_head"].size)
    stored = sum(
        numpy_helper.to_array(t).nbytes if t.data_type not in (TensorProto.INT4, TensorProto.UINT4) else t.dims[0] * t.dims[1] // 2
        for t in model.graph.initializer
        if t.name not in ("w_a", "w_b")
    )
    assert stored < fp32 * (0.4 if scheme == "int8" else 0.25)


def test_policy_roles_and_keep_float() -> None:
    model = _graph(_weights())
    shapes = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    assert classify_matmuls(model.graph, shapes, N_EMBD) == {"lin": "matrix", "lora_a": "lora", "lora_b": "lora", "head": "head"}
    info = quantize_graph(model, QuantSpec("int4", 16, False, "matmulnbits", (("lora", "float"), ("head", "int8"))), N_EMBD)
    assert info["roles"] == {"matrix": {"int4": 1}, "lora": {"float": 2}, "head": {"int8": 1}, "embedding": {}}
    bits = {
        n.name: helper.get_attribute_value(n.attribute[[a.name for a in n.attribute].index("bits")])
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
    }
    assert bits == {"lin_Q4": 4, "head_Q8": 8}
    assert QuantSpec("int4").precision("head") == "int4" and QuantSpec("int8").precision("lora") == "int8"
    assert QuantSpec("int4", format="qdq").precision("embedding") == "float"


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_embedding_gather_is_block_quantized(scheme: str) -> None:
    """Gather(table) -> GatherBlockQuantized: ORT's rows equal the numpy dequantized rows of the stored blocks."""
    table = np.random.default_rng(3).standard_normal((50, K)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "tokens"], ["x"], name="embedding", axis=0)],
        "g",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
        [numpy_helper.from_array(table, "emb")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    info = quantize_graph(model, QuantSpec(scheme, 16), N_EMBD)
    assert info["roles"]["embedding"] == {scheme: 1}
    # data + float32 scales + zero points of 50 rows in 4 blocks: int8 3200 + 800 + 200, int4 1600 + 800 + 100
    assert info["embedding_bytes"] == {"int8": 4200, "int4": 2500}[scheme] == info["weight_bytes"]
    node = model.graph.node[0]
    assert node.op_type == "GatherBlockQuantized" and node.domain == "com.microsoft"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q, scale, zp = (inits[name].astype(np.float64) for name in (node.input[0], node.input[2], node.input[3]))
    if q.shape[1] != K:  # 4-bit values stored two to a byte
        q, zp = _nibbles(inits[node.input[0]]).astype(np.float64), _nibbles(inits[node.input[3]]).astype(np.float64)
    rows = (q - np.repeat(zp, 16, axis=1)) * np.repeat(scale, 16, axis=1)
    bound = 0.5 * np.repeat(np.abs(table).reshape(50, -1, 16).max(-1), 16, axis=1) * 2 / (2 ** (8 if scheme == "int8" else 4) - 1)
    assert np.all(np.abs(rows - table) <= bound * (1 + 1e-5) + 1e-7)
    tokens = np.array([0, 49, 7, 7])
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"tokens": tokens})[0]
    np.testing.assert_allclose(got, rows[tokens], rtol=0, atol=1e-6)


def test_bad_block_sizes_and_dtype() -> None:
    with pytest.raises(RwkvExportError, match="does not divide the dimension 64 of w_lin"):
        quantize_graph(_graph(_weights()), QuantSpec("int4", 128, False, "matmulnbits", ()), N_EMBD)
    with pytest.raises(RwkvExportError, match="power of two"):
        QuantSpec("int4", 48).check("float32")
    with pytest.raises(RwkvExportError, match="cannot combine with --dtype float16"):
        QuantSpec("int8").check("float16")
    with pytest.raises(RwkvExportError, match="--policy norms=float: expected ROLE=PRECISION"):
        QuantSpec("int8", policy=(("norms", "float"),)).check("float32")


def test_cli_refuses_quant_options_without_quantize(random_ckpt: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (
        ["--block-size", "32"],
        ["--quantize", "int4", "--dtype", "float16"],
        ["--quantize", "int4", "--block-size", "24"],
        ["--quantize", "int4", "--policy", "head"],
        ["--quantize", "int4", "--policy", "head=int2"],
    ):
        result = runner.invoke(cli, ["export", str(random_ckpt), "-o", str(tmp_path / "o"), *args], catch_exceptions=False)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rwkv_export.export import export_checkpoint

    out = tmp_path_factory.mktemp("quant") / "int8"
    export_checkpoint(tiny_model("4v0-660K"), out, all_logits=True, quantize=QuantSpec("int8"))
    return out


@requires_shared
@pytest.mark.slow
def test_tiny_int8_export_accuracy_and_size(tiny_int8: Path) -> None:
    """The tiny trained RWKV-4 in int8: both graphs quantized alike, manifest policy, <= 0.3x the float
    weight bytes of its matrices, and on held-out Shakespeare within 1% perplexity and >= 98% top-1."""
    from rwkv_export.checkpoint import load_checkpoint
    from rwkv_export.parity.backends import TorchBackend, exported_backend
    from rwkv_export.parity.evaluate import evaluate, read_text, tokenize
    from rwkv_export.tokenizer import ByteTokenizer

    manifest = json.loads((tiny_int8 / "manifest.json").read_text())
    quant = manifest["export"]["quantization"]
    assert quant["scheme"] == "int8" and quant["block_size"] == 32 and set(quant["policy"].values()) == {"int8"}
    assert (
        quant["graphs"]["prefill"]["roles"]
        == quant["graphs"]["step"]["roles"]
        == {"matrix": {"int8": 28}, "lora": {}, "head": {"int8": 1}, "embedding": {"int8": 1}}
    )
    for graph in ("prefill", "step"):
        ops = [n.op_type for n in onnx.load(tiny_int8 / f"{graph}.onnx").graph.node]
        assert ops.count("MatMulNBits") == 29 and ops.count("GatherBlockQuantized") == 1 and "Gemm" not in ops
    float_bytes = 4 * manifest["model"]["parameters"]
    assert quant["graphs"]["step"]["weight_bytes"] <= 0.3 * float_bytes
    text_file = SHARED / "texts" / "tinyshakespeare.txt"
    if not text_file.is_file():
        pytest.skip(f"needs {text_file}")
    text = tokenize(read_text(text_file, 0.9, 1.0), ByteTokenizer(), 128, 3000, "shakespeare")
    ckpt = load_checkpoint(tiny_model("4v0-660K"))
    with TorchBackend(ckpt, "float64") as ref, exported_backend(tiny_int8, "cpu", "ort-int8", 1) as q:
        ref_row, row = evaluate(ref, [q], text, 128)
    assert abs(row["perplexity"] / ref_row["perplexity"] - 1) < 0.01
    assert row["top1_agreement"] >= 0.98 and row["kl_mean"] < 1e-3


@requires_shared
@pytest.mark.slow
def test_verify_judges_a_quantized_export_by_its_own_tolerance(tiny_int8: Path, tmp_path: Path) -> None:
    args = [
        "verify",
        str(tiny_int8),
        "--backends",
        "ort-cpu-float32",
        "--seq",
        "16",
        "--steps",
        "4",
        "--batch",
        "1",
        "--threads",
        "1",
        "-q",
    ]
    result = CliRunner().invoke(cli, [*args, "--json", str(tmp_path / "p.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    backend = json.loads((tmp_path / "p.json").read_text())["backends"][0]
    assert backend["dtype"] == "int8" and backend["tolerance"]["logits_rtol"] == 0.3
    assert "tolerance int8" in result.stdout
    tight = CliRunner().invoke(cli, [*args, "--tol", "int8=1e-4"], catch_exceptions=False)  # int8 rounding is far above 1e-4
    assert tight.exit_code == 1, tight.output


@requires_shared
@pytest.mark.slow
@pytest.mark.tensorrt
def test_qdq_export_builds_smaller_tensorrt_rtx_engines(tmp_path: Path) -> None:
    """TensorRT-RTX (CPU build) parses the symmetric int4/int8 DequantizeLinear -> MatMul graphs and
    serializes engines smaller than the float32 ones (measured: step engines int4 3.1-3.7 MB, int8 3.5-3.6 MB,
    float32 4.9 MB; at this size the plan's kernels weigh as much as the weights)."""
    from rwkv_export import engine
    from rwkv_export.export import export_checkpoint
    from rwkv_export.export.requantize import quantize_export
    from rwkv_export.kernels import trt_compat

    if "tensorrt-rtx" not in trt_compat.available_targets():
        pytest.skip("needs TensorRT-RTX: pip install 'rwkv-export[tensorrt]'")
    options = engine.BuildOptions(target="tensorrt-rtx", max_batch=2, opt_batch=1, max_seq=16, opt_seq=8)
    export_checkpoint(tiny_model("4v0-660K"), tmp_path / "f32")
    sizes = {}
    for name, spec in (
        ("int4", QuantSpec("int4", symmetric=True, format="qdq")),
        ("int8", QuantSpec("int8", symmetric=True, format="qdq")),
    ):
        manifest = quantize_export(tmp_path / "f32", tmp_path / name, spec)
        assert manifest["graphs"]["step"]["opset"] == 21
        ops = [n.op_type for n in onnx.load(tmp_path / name / "step.onnx").graph.node]
        assert ops.count("DequantizeLinear") == 29 and "MatMulNBits" not in ops
    for name in ("f32", "int8", "int4"):
        engine.build(tmp_path / name, options)
        sizes[name] = (tmp_path / name / "step.plan").stat().st_size
    assert max(sizes["int4"], sizes["int8"]) < 0.85 * sizes["f32"], sizes
