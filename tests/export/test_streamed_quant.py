"""`export --quantize` on the streamed export: every matrix quantized a slab at a time as it is read
from the checkpoint, never held whole in float (issue 14's 7B target in issue 13's memory budget).

Oracle: ONNX Runtime's own quantization tool (`MatMulNBitsQuantizer`) run in memory on the float32
export of the same checkpoint; and the quantized export's logits against the float64 reference.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from rwkv_export.checkpoint import Checkpoint, save_checkpoint
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.export import export_checkpoint
from rwkv_export.export.quantize import QuantSpec
from rwkv_export.export.weights import WEIGHTS_FILE
from rwkv_export.runtime import ExportedModel


def _save(tmp_path: Path, version: str, layers: int = 3, embd: int = 64, vocab: int = 300) -> Path:
    config, weights = random_weights(version, layers, embd, vocab, seed=11)
    path = tmp_path / f"v{version}.safetensors"
    save_checkpoint(Checkpoint(config, weights, "random", path), path)
    return path


def _ort_tool(model: onnx.ModelProto, bits: int, symmetric: bool) -> onnx.ModelProto:
    """ONNX Runtime's MatMulNBitsQuantizer on a float32 graph (MatMuls; at 4 bits the Gather too)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    root.handlers[:], root.level = handlers, level
    ops = ("MatMul", "Gather") if bits == 4 else ("MatMul",)
    config = DefaultWeightOnlyQuantConfig(
        block_size=16,
        is_symmetric=symmetric,
        accuracy_level=4,
        bits=bits,
        op_types_to_quantize=ops,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    tool = MatMulNBitsQuantizer(model, algo_config=config)
    tool.process()
    return tool.model.model


def _tensors(directory: Path, model: onnx.ModelProto) -> dict[str, bytes]:
    """Every initializer's stored bytes (int4 tensors have no numpy form), external data read from its file."""
    out = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            where = {e.key: e.value for e in t.external_data}
            with open(directory / where["location"], "rb") as f:
                f.seek(int(where["offset"]))
                out[t.name] = f.read(int(where["length"]))
        else:
            out[t.name] = t.raw_data if t.raw_data else numpy_helper.to_array(t).tobytes()
    return out


@pytest.mark.parametrize(("version", "bits", "symmetric"), [("7", 4, False), ("6", 8, False), ("4", 4, True)])
def test_streamed_quantization_is_onnxruntimes_quantizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, bits: int, symmetric: bool
) -> None:
    """Slabs of 4 kB (hundreds per matrix) into a shared weights.data: every MatMulNBits and
    GatherBlockQuantized node, attribute and tensor byte equals ONNX Runtime's tool's on the float
    export (which quantizes each whole matrix in memory)."""
    from rwkv_export.export import weights

    path = _save(tmp_path, version)
    float_dir = export_checkpoint(path, tmp_path / "f32").directory
    monkeypatch.setattr(weights, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(weights, "BLOCKED_FROM", 0)
    policy = None if bits == 4 else (("embedding", "float"),)  # the tool quantizes a Gather at 4 bits only
    spec = QuantSpec(f"int{bits}", 16, symmetric, "matmulnbits", policy)
    ours_dir = export_checkpoint(path, tmp_path / "q", quantize=spec, external_data_threshold=0).directory
    assert (ours_dir / WEIGHTS_FILE).exists()
    for graph in ("prefill", "step"):
        ours = onnx.load(str(ours_dir / f"{graph}.onnx"), load_external_data=False)
        theirs = _ort_tool(onnx.load(str(float_dir / f"{graph}.onnx")), bits, symmetric)
        ours_nodes = {n.name: n for n in ours.graph.node if n.domain == "com.microsoft"}
        theirs_nodes = {n.name: n for n in theirs.graph.node if n.domain == "com.microsoft"}
        if symmetric and bits == 4:  # the tool's symmetric int4 table: INT4 without zero points; ours stays asymmetric
            theirs_nodes = {k: n for k, n in theirs_nodes.items() if n.op_type != "GatherBlockQuantized"}
            ours_nodes = {k: n for k, n in ours_nodes.items() if n.op_type != "GatherBlockQuantized"}
        assert ours_nodes.keys() == theirs_nodes.keys() and len(ours_nodes) >= 4 * 3
        a, b = _tensors(ours_dir, ours), _tensors(float_dir, theirs)
        for name, node in ours_nodes.items():
            other = theirs_nodes[name]
            assert list(node.input) == list(other.input), name
            assert {x.name: helper.get_attribute_value(x) for x in node.attribute} == {
                x.name: helper.get_attribute_value(x) for x in other.attribute
            }, name
            for tensor in node.input[1:] if node.op_type == "MatMulNBits" else [node.input[0], *node.input[2:]]:
                assert a[tensor] == b[tensor], f"{graph}: {tensor}"


@pytest.mark.parametrize(("scheme", "dtype"), [("int4", "float16"), ("int8", "float32")])
def test_streamed_qdq_equals_the_in_memory_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str, dtype: str) -> None:
    """The qdq format (blocked DequantizeLinear, slabs of rows: a multiple of the block, of two blocks
    at 4 bits) streamed in 4 kB slabs equals `quantize_graph` on the whole float export, byte for byte."""
    from rwkv_export.export import weights
    from rwkv_export.export.quantize import quantize_graph

    path = _save(tmp_path, "6")
    float_dir = export_checkpoint(path, tmp_path / "float", dtype=dtype).directory
    monkeypatch.setattr(weights, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(weights, "BLOCKED_FROM", 0)
    spec = QuantSpec(scheme, 16, True, "qdq")
    ours_dir = export_checkpoint(path, tmp_path / "q", dtype=dtype, quantize=spec, external_data_threshold=0).directory
    for graph in ("prefill", "step"):
        ours = onnx.load(str(ours_dir / f"{graph}.onnx"), load_external_data=False)
        theirs = onnx.load(str(float_dir / f"{graph}.onnx"))
        quantize_graph(theirs, spec, 64)
        dq = [n for n in ours.graph.node if n.op_type == "DequantizeLinear"]
        assert len(dq) >= 3 * 4 and [n.name for n in dq] == [n.name for n in theirs.graph.node if n.op_type == "DequantizeLinear"]
        a, b = _tensors(ours_dir, ours), _tensors(float_dir, theirs)
        for node in dq:
            for tensor in node.input:
                assert a[tensor] == b[tensor], f"{graph}: {tensor}"


def test_streamed_int4_logits_follow_the_reference(tmp_path: Path) -> None:
    """A shared-file int4 export and an inline one give the same logits, and those point the way
    the float64 reference's do (cosine > 0.95 over the vocabulary; random weights: a sanity bound, the
    accuracy cost is eval's on trained models)."""
    import torch

    from rwkv_export.checkpoint import load_checkpoint
    from rwkv_export.model import build_model

    path = _save(tmp_path, "7", layers=2, embd=128, vocab=256)
    spec = QuantSpec("int4", 16)
    shared = export_checkpoint(path, tmp_path / "shared", quantize=spec, external_data_threshold=0).directory
    inline = export_checkpoint(path, tmp_path / "inline", quantize=spec).directory
    tokens = np.array([[3, 141, 59, 26, 5, 35, 89, 79]])
    outs = []
    for d in (shared, inline):
        with ExportedModel(d, threads=1) as m:
            outs.append(m.prefill(tokens)[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    ref = build_model(load_checkpoint(path), "float64")
    with torch.no_grad():
        expected = ref.forward_sequence(torch.tensor(tokens), ref.initial_state(1))[0].numpy()
    got = outs[0].reshape(expected.shape)
    cos = float(np.sum(got * expected) / np.linalg.norm(got) / np.linalg.norm(expected))
    assert cos > 0.95, cos


def test_quantized_cpu_steps_run_in_the_prefill_session(tmp_path: Path) -> None:
    """A quantized export on the CPU opens one session (each holds its own prepacked weights): steps
    run the prefill graph at T = 1, with the step graph's logits and state to the bit."""
    from rwkv_export.manifest import Manifest
    from rwkv_export.runtime.loaders import SessionFromOnnx
    from rwkv_export.runtime.onnxrt import OrtRunner, StepThroughPrefill

    path = _save(tmp_path, "5.2", layers=2, embd=64, vocab=256)
    for all_logits in (False, True):
        out = export_checkpoint(path, tmp_path / f"q{all_logits}", quantize=QuantSpec("int8", 16), all_logits=all_logits).directory
        manifest = Manifest.read(out)
        two = {g: OrtRunner(SessionFromOnnx(out / i.file, "cpu", 1), graph=i, vocab_size=256) for g, i in manifest.graphs.items()}
        with ExportedModel(out, threads=1) as one, ExportedModel(out, runners=two) as both:
            assert isinstance(one.runners["step"], StepThroughPrefill) and isinstance(both.runners["step"], OrtRunner)
            states = [m.prefill(np.array([[7, 8, 9], [1, 2, 3]]))[1] for m in (one, both)]
            for token in (5, 250, 0):
                (a, states[0]), (b, states[1]) = one.step(np.array([token, 3]), states[0]), both.step(np.array([token, 3]), states[1])
                assert a.shape == (2, 256)
                np.testing.assert_array_equal(a, b)
                for name in states[0]:
                    np.testing.assert_array_equal(states[0][name], states[1][name])
