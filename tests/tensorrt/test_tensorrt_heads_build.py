"""TensorRT engines for RWKV-5/6/7: the rwkv::WKV5/6/7 plugins (plugins/trt_plugin.py over the op
registry's shape/dtype rules) built through TensorRT-RTX on the CPU, as tests/tensorrt/test_tensorrt_build.py
does for WKV4; the AOT front's logic (plugins/trt_aot.py) for every op. The shape rules run everywhere; builds skip without TensorRT-RTX; running the engines
needs a GPU and TensorRT (tests/tensorrt/test_tensorrt_gpu.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from rwkv_export import engine
from rwkv_export.fileio import sha256_file
from rwkv_export.kernels import trt_compat, trt_plugin
from rwkv_export.ops.registry import OPS as PLUGIN_OPS
from tests.conftest import requires_shared, tiny_model

HAVE_RTX = importlib.util.find_spec("tensorrt_rtx_bindings") is not None or importlib.util.find_spec("tensorrt_rtx") is not None
requires_rtx = pytest.mark.skipif(not HAVE_RTX, reason="needs TensorRT-RTX: pip install 'rwkv-export[tensorrt]'")
RTX = "tensorrt-rtx"
OPTIONS = engine.BuildOptions(target=RTX, max_batch=4, opt_batch=2, max_seq=32, opt_seq=8)
OPS = tuple(op for op, spec in PLUGIN_OPS.items() if spec.kernel.head_sizes)  # WKV5, WKV6, WKV7


def _shapes(op: str, B: int, T: int, H: int, N: int) -> dict[str, list[int]]:
    special = {"u": [H, N], "state_in": [B, H, N, N], "w_raw": [H, N] if op == "WKV5" else [B, T, H, N]}
    return {name: special.get(name, [B, T, H, N]) for name in PLUGIN_OPS[op].inputs}


@pytest.mark.parametrize("op", OPS)
def test_shape_rules(op: str) -> None:
    spec = PLUGIN_OPS[op]
    assert spec.check_shapes(list(_shapes(op, 2, 5, 3, 64).values())) == (2, 5, 3, 64)
    assert spec.check_shapes(list(_shapes(op, -1, -1, 3, 64).values())) == (-1, -1, 3, 64)
    assert trt_plugin.outputs_like(spec.inputs, op) == ["k", "state_in"]
    assert spec.dtype_like[0] is None, "y is float32 whatever the inputs' dtype"
    bad = _shapes(op, 2, 5, 3, 64) | {"state_in": [2, 3, 64, 32]}
    with pytest.raises(ValueError, match=rf"{op} input state_in must have shape \[2, 3, 64, 64\]"):
        spec.check_shapes(list(bad.values()))
    with pytest.raises(ValueError, match=rf"{op} has no kernel for head size 48"):
        spec.check_shapes(list(_shapes(op, 2, 5, 3, 48).values()))
    assert trt_plugin.kernel_sha256(op) == trt_plugin.kernel_sha256("WKV7") != trt_plugin.kernel_sha256("WKV4")  # one unit


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
    from rwkv_export.ops.onnx_function import wkv_model

    onnx_path = tmp_path / f"{op}.onnx"
    onnx.save(wkv_model(op), str(onnx_path))
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
    for field in (*trt_plugin.serialized_fields(op), trt_plugin.kernel_sha256(op), op):
        assert field.encode() in plan, f"plan lacks {field!r}"
    for field in (f"{op.lower()}_format", "launch_form"):
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


# --- the AOT front's own logic (tensorrt.plugin itself is not installable here) --------------------


class _Expr:
    """A shape expression: a known int, or symbolic (value None)."""

    def __init__(self, value: int | None) -> None:
        self.value = value

    def __mul__(self, other: _Expr) -> _Expr:
        return _Expr(None if self.value is None or other.value is None else self.value * other.value)

    @property
    def is_constant(self) -> bool:
        return self.value is not None

    def constant_value(self) -> int:
        assert self.value is not None
        return self.value


class _Combination(tuple):
    def __new__(cls, types: str, fmt: str) -> _Combination:
        return super().__new__(cls, (types, fmt))


class _Recorder:
    """Stands in for `tensorrt.plugin`'s decorators and value classes: records what is registered."""

    def __init__(self) -> None:
        self.fns: dict[tuple[str, str], Any] = {}
        self.KernelLaunchParams = type("KernelLaunchParams", (), {})
        self.SymIntExprs = type("SymIntExprs", (), {"from_tuple": staticmethod(list)})
        self.SymInt32 = lambda e: e  # noqa: E731
        self.AutoTuneCombination = _Combination
        self.SymExprs = type("SymExprs", (), {})
        self.from_shape_expr = lambda shape, dtype: ("from_shape_expr", shape, dtype)  # noqa: E731
        self.TensorDesc = object
        self.cdiv = lambda a, b: _Expr(None if a.value is None else -(-a.value // b))  # noqa: E731

    def _deco(self, kind: str, pid: str) -> Any:
        def wrap(fn: Any) -> Any:
            self.fns[(kind, pid)] = fn
            return fn

        return wrap

    def register(self, pid: str) -> Any:
        return self._deco("register", pid)

    def autotune(self, pid: str) -> Any:
        return self._deco("autotune", pid)

    def aot_impl(self, pid: str) -> Any:
        return self._deco("aot_impl", pid)


@pytest.mark.parametrize("op", OPS)
def test_aot_front_signatures_entries_and_geometry(op: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    pytest.importorskip("cuda.bindings", reason="NVRTC (cuda-bindings) compiles the PTX the AOT plugin embeds")
    from rwkv_export.kernels import trt_aot
    from rwkv_export.kernels.nvrtc import ptx_entries

    monkeypatch.setenv("RWKV_EXPORT_CACHE", str(tmp_path))
    rec = _Recorder()
    trt_aot.define(rec, type("trt", (), {"float32": "FP32"}), "sm_80")
    pid = f"rwkv::{op}"
    names = PLUGIN_OPS[op].inputs
    for kind in ("register", "autotune", "aot_impl"):  # TensorRT binds inputs by position: names must be the op's
        assert tuple(inspect.signature(rec.fns[(kind, pid)]).parameters)[: len(names)] == names, kind
    ((combo, fmt),) = rec.fns[("autotune", pid)](*[None] * (len(names) + 1))
    assert combo.split(", ") == ["FP32"] * (len(names) + 2) and fmt == "LINEAR"

    B, T, H = _Expr(None), _Expr(None), _Expr(12)
    k = type("Desc", (), {"shape_expr": [B, T, H, _Expr(64)]})()
    descs = [k if n == "k" else None for n in names]
    entry, ptx, params, scalars = rec.fns[("aot_impl", pid)](*descs, (), 0)
    assert entry == f"{op.lower()}_n64_f32".encode() and entry.decode() in ptx_entries(ptx.decode())
    assert params.block_x == 64 and params.shared_mem == 0 and scalars == [B, T, H]
    assert params.grid_x.value is None  # B * H, resolved at run time
    k.shape_expr = [_Expr(2), _Expr(3), _Expr(12), _Expr(64)]
    assert rec.fns[("aot_impl", pid)](*descs, (), 0)[2].grid_x.value == 24
    k.shape_expr = [B, T, H, _Expr(None)]
    with pytest.raises(ValueError, match="head size .* must be static"):
        rec.fns[("aot_impl", pid)](*descs, (), 0)
    k.shape_expr = [B, T, H, _Expr(48)]
    with pytest.raises(ValueError, match="no kernel for head size 48"):
        rec.fns[("aot_impl", pid)](*descs, (), 0)
    y, state = rec.fns[("register", pid)](
        *[k if n == "k" else (type("S", (), {"like": lambda self: "like-state"})() if n == "state_in" else None) for n in names]
    )
    assert y == ("from_shape_expr", k.shape_expr, "FP32") and state == "like-state"


def test_aot_front_wkv4_entry_and_geometry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WKV4 through the same generated AOT front: the seq kernel, one thread per (b, c), sizes B, T, C."""
    import inspect

    pytest.importorskip("cuda.bindings", reason="NVRTC (cuda-bindings) compiles the PTX the AOT plugin embeds")
    from rwkv_export.kernels import trt_aot
    from rwkv_export.kernels.nvrtc import ptx_entries

    monkeypatch.setenv("RWKV_EXPORT_CACHE", str(tmp_path))
    rec = _Recorder()
    trt_aot.define(rec, type("trt", (), {"float32": "FP32"}), "sm_80")
    names = PLUGIN_OPS["WKV4"].inputs
    for kind in ("register", "autotune", "aot_impl"):
        assert tuple(inspect.signature(rec.fns[(kind, "rwkv::WKV4")]).parameters)[: len(names)] == names, kind
    ((combo, _),) = rec.fns[("autotune", "rwkv::WKV4")](*[None] * (len(names) + 1))
    assert combo.split(", ") == ["FP32"] * 11
    B, T, C = _Expr(3), _Expr(None), _Expr(300)
    k = type("Desc", (), {"shape_expr": [B, T, C]})()
    entry, ptx, params, scalars = rec.fns[("aot_impl", "rwkv::WKV4")](*[k if n == "k" else None for n in names], (), 0)
    assert entry == b"wkv4_seq_f32" and entry.decode() in ptx_entries(ptx.decode())
    assert params.block_x == 128 and params.grid_x.value == 8 and scalars == [B, T, C]  # ceil(900 / 128)
    like = type("S", (), {"like": lambda self: "like"})()
    assert rec.fns[("register", "rwkv::WKV4")](*[like] * len(names)) == ("like",) * 4  # y like k, state like aa, bb, pp
