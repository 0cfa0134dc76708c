"""TensorRT engines for RWKV-5/6/7: the rwkv::WKV5/6/7 plugins (plugins/trt_plugin.py over
plugins/plugin_ops.py) built through TensorRT-RTX on the CPU, as tests/test_tensorrt_build.py does
for WKV4. The shape rules run everywhere; builds skip without TensorRT-RTX; running the engines
needs a GPU and TensorRT (tests/test_tensorrt_gpu.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from plugins import trt_compat, trt_plugin
from plugins.plugin_ops import PLUGIN_OPS
from rwkv_export import engine
from rwkv_export.fileio import sha256_file
from tests.conftest import requires_shared, tiny_model

HAVE_RTX = importlib.util.find_spec("tensorrt_rtx_bindings") is not None or importlib.util.find_spec("tensorrt_rtx") is not None
requires_rtx = pytest.mark.skipif(not HAVE_RTX, reason="needs TensorRT-RTX: pip install 'rwkv-export[tensorrt]'")
RTX = "tensorrt-rtx"
OPTIONS = engine.BuildOptions(target=RTX, max_batch=4, opt_batch=2, max_seq=32, opt_seq=8)
OPS = ("WKV5", "WKV6", "WKV7")


def _shapes(op: str, B: int, T: int, H: int, N: int) -> dict[str, list[int]]:
    special = {"u": [H, N], "state_in": [B, H, N, N], "w_raw": [H, N] if op == "WKV5" else [B, T, H, N]}
    return {name: special.get(name, [B, T, H, N]) for name in PLUGIN_OPS[op].inputs}


@pytest.mark.parametrize("op", OPS)
def test_shape_rules(op: str) -> None:
    spec = PLUGIN_OPS[op]
    assert spec.check_shapes(list(_shapes(op, 2, 5, 3, 64).values())) == (2, 5, 3, 64)
    assert spec.check_shapes(list(_shapes(op, -1, -1, 3, 64).values())) == (-1, -1, 3, 64)
    assert trt_plugin.outputs_like(spec.inputs, spec) == ["k", "state_in"]
    assert spec.dtype_like[0] is None, "y is float32 whatever the inputs' dtype"
    bad = _shapes(op, 2, 5, 3, 64) | {"state_in": [2, 3, 64, 32]}
    with pytest.raises(ValueError, match=rf"{op} input state_in must have shape \[2, 3, 64, 64\]"):
        spec.check_shapes(list(bad.values()))
    with pytest.raises(ValueError, match=rf"{op} has no kernel for head size 48"):
        spec.check_shapes(list(_shapes(op, 2, 5, 3, 48).values()))
    assert spec.kernel_sha256() == trt_plugin.kernel_sha256(op) != trt_plugin.kernel_sha256("WKV4")


def test_wkv5_decay_is_per_head() -> None:
    shapes = _shapes("WKV5", 2, 5, 3, 64) | {"w_raw": [2, 5, 3, 64]}
    with pytest.raises(ValueError, match=r"input w_raw must have shape \[3, 64\]"):
        PLUGIN_OPS["WKV5"].check_shapes(list(shapes.values()))


@requires_rtx
def test_every_op_has_a_creator_in_namespace_rwkv() -> None:
    trt = trt_compat.load(RTX)
    trt_plugin.register(trt)
    registry = trt.get_plugin_registry()
    for op in PLUGIN_OPS:
        found = registry.get_creator(op, "1", "rwkv")
        assert found is not None and found.name == op, op


@requires_rtx
@pytest.mark.parametrize("op", OPS)
def test_single_node_becomes_our_plugin(tmp_path: Path, op: str) -> None:
    from custom_ops.wkv_matrix_onnx import wkv_matrix_model

    onnx_path = tmp_path / f"{op}.onnx"
    onnx.save(wkv_matrix_model(op), str(onnx_path))
    H, N = 2, 64
    bounds = [_shapes(op, b, t, H, N) for b, t in ((1, 1), (2, 8), (4, 32))]
    profile = {name: [b[name] for b in bounds] for name in PLUGIN_OPS[op].inputs}
    report = engine.build_graph(onnx_path, tmp_path / f"{op}.plan", profile, OPTIONS, RTX, "python")

    assert [(layer["name"], layer["type"]) for layer in report["layers"]] == [(op.lower(), "PLUGIN_V3")]
    (call,) = [e for e in report["plugin_events"] if e["method"] == "configure_plugin"]
    for bound, j in (("min", 0), ("opt", 1), ("max", 2)):
        assert call[bound] == [profile[name][j] for name in PLUGIN_OPS[op].inputs], bound
    assert call["outputs"] == [[-1, -1, H, N], [-1, H, N, N]]
    (types,) = [e for e in report["plugin_events"] if e["method"] == "get_output_data_types"][:1]
    plan = (tmp_path / f"{op}.plan").read_bytes()
    for field in (f"{op.lower()}_format", "launch_form", trt_plugin.kernel_sha256(op), op):
        assert field.encode() in plan, f"plan lacks {field!r}"
    assert types["inputs"], types


def _wkv_nodes(onnx_path: Path, op: str) -> list[str]:
    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == op and n.domain == "rwkv"]


@requires_rtx
@requires_shared
@pytest.mark.slow
@pytest.mark.parametrize("stem,op", [("5v2-730K", "WKV5"), ("6v0-1m", "WKV6"), ("7v0-834K", "WKV7")])
def test_tiny_trained_model_engines_map_every_wkv_node(tmp_path: Path, stem: str, op: str) -> None:
    from rwkv_export.export import export_checkpoint

    model_dir = tmp_path / "model"
    export_checkpoint(tiny_model(stem), model_dir)
    reports: dict[str, dict[str, Any]] = {}
    engine.build(model_dir, OPTIONS, on_report=lambda graph, report: reports.__setitem__(graph, report))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    n_layer = manifest["model"]["n_layer"]
    for graph in engine.GRAPHS:
        report, entry = reports[graph], manifest["engines"][graph]
        nodes = _wkv_nodes(model_dir / manifest["graphs"][graph]["file"], op)
        assert len(nodes) == n_layer, (graph, nodes)
        plugins = [layer["name"] for layer in report["layers"] if layer["type"] == "PLUGIN_V3"]
        assert sorted(plugins) == sorted(nodes), graph
        assert len([e for e in report["plugin_events"] if e["method"] == "configure_plugin"]) == n_layer
        assert entry["plugin"] == "python" and entry["plugin_layers"] == n_layer
        assert entry["sha256"] == sha256_file(model_dir / entry["file"])
        assert trt_plugin.kernel_sha256(op).encode() in (model_dir / entry["file"]).read_bytes()
