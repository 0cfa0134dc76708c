"""Export of RWKV-5.1, 5.2, 6 and 7: the rwkv::WKV5/6/7 functions, the graphs, the manifest, verify.

Oracles: rwkv.cpp's expected logits for its tiny trained files (max abs within 1e-5, argmax equal,
after ids 34, 105, 110 from a fresh state); the float64 reference model (custom_ops/wkv*.py numpy
for the ops alone); self-consistency (prefill(T) == T steps, split prefills); onnx.reference as a
second executor. Tolerances as tests/export/test_export.py: relative to the largest |value| of the float64
run, float32 1e-5 on logits and 1e-4 on the state (the float32 recurrence accumulates rounding over T),
float16 2e-2 (3e-2 for 5.1, whose GroupNorm eps 1e-5 amplifies rounding: tests/model/test_model.py).

Both forms of the functions (scan; chunked for WKV5/6) are checked alone in tests/ops/test_ops_onnx.py; the exports use scan,
except the v6 time_state export, which uses chunked (its steps then take the If's scan branch).

The tiny files have 12 layers: each export takes ~25-45 s on the (shared) 2-core VM, so every tiny
export is made once per module (float32, --all-logits), shared, and its tests are marked `slow`
(`-m "not slow"` leaves ~30 s of op, float16, time_state, external-data and option tests); dtype
and time_state cases use 2-layer random checkpoints.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from rwkv_export.checkpoint import Checkpoint, load_checkpoint
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.errors import RwkvExportError
from rwkv_export.export import export_checkpoint
from rwkv_export.model import build_model
from rwkv_export.ops import wkv5, wkv6, wkv7
from rwkv_export.ops.onnx_function import wkv_function
from rwkv_export.ops.registry import OPS as OPS_REGISTRY
from rwkv_export.runtime import ExportedModel
from rwkv_export.versions import version_info
from tests.conftest import TINY, requires_shared, tiny_model

VERSIONS = ["5.1", "5.2", "6", "7"]
TINY_STEMS = {"5.1": "5v1-730K", "5.2": "5v2-730K", "6": "6v0-1m", "7": "7v0-834K"}
OPS = {"5.1": "WKV5", "5.2": "WKV5", "6": "WKV6", "7": "WKV7"}
LAYOUT = {"5.1": "key-major", "5.2": "key-major", "6": "key-major", "7": "value-major"}
PROMPT = [34, 105, 110]  # rwkv.cpp's test prompt ('"in')
EXPECTED_ABS = 1e-5  # rwkv.cpp's expected logits: max abs (logits span ~4-20)
TOL = {"float32": 1e-5, "float16": 2e-2}
STATE_TOL_F32 = 1e-4


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def _ref_run(model, tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """The float64 reference from a numpy state: all logits [B, T, V], state as numpy."""
    s = type(model.initial_state(1))(*(torch.from_numpy(np.asarray(state[n], np.float64)) for n in ("x_att", "wkv", "x_ffn")))
    with torch.no_grad():
        logits, new = model.forward_sequence(torch.from_numpy(tokens), s, all_logits=True)
    return logits.numpy(), {n: t.numpy() for n, t in new._asdict().items()}


# --- the tiny trained files --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """version -> its tiny FP32 file exported (float32, all logits); each made on first use."""
    root = tmp_path_factory.mktemp("tiny-exports")
    made: dict[str, Path] = {}

    def get(version: str) -> Path:
        if version not in made:
            made[version] = export_checkpoint(tiny_model(TINY_STEMS[version]), root / version, all_logits=True).directory
        return made[version]

    return get


@requires_shared
@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_tiny_expected_logits(tiny_exports: Callable[[str], Path], version: str) -> None:
    """Prefill of the prompt and the prompt as 3 steps, against rwkv.cpp's logits and the float64 model."""
    stem = TINY_STEMS[version]
    expected = np.fromfile(TINY / f"expected-logits-{stem}.bin", np.float32)
    model = build_model(load_checkpoint(tiny_model(stem)), "float64")
    with ExportedModel(tiny_exports(version)) as exported:
        tokens = np.array([PROMPT])
        logits, state = exported.prefill(tokens)
        ref, ref_state = _ref_run(model, tokens, exported.initial_state(1))
        assert logits.shape == (1, 3, 256)
        err = float(np.abs(logits[0, -1] - expected).max())
        assert err < EXPECTED_ABS, f"ORT float32 prefill, {stem}: max abs vs rwkv.cpp {err:.2e}"
        assert logits[0, -1].argmax() == expected.argmax(), f"ORT float32 prefill, {stem}: argmax differs"
        assert _rel(logits, ref) < TOL["float32"], f"ORT prefill {stem}: logits rel {_rel(logits, ref):.2e} vs float64"
        for name, value in state.items():
            assert _rel(value, ref_state[name]) < STATE_TOL_F32, f"ORT prefill {stem}: {name} rel {_rel(value, ref_state[name]):.2e}"
        state = exported.initial_state(1)
        for token in PROMPT:
            step_logits, state = exported.step(np.array([token]), state)
        err = float(np.abs(step_logits[0] - expected).max())
        assert err < EXPECTED_ABS, f"ORT float32 steps, {stem}: max abs vs rwkv.cpp {err:.2e}"
        assert step_logits[0].argmax() == expected.argmax()


@requires_shared
@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_tiny_prefill_equals_steps_and_split_prefill(tiny_exports: Callable[[str], Path], version: str) -> None:
    tokens = np.random.default_rng(1).integers(0, 256, (2, 12))
    with ExportedModel(tiny_exports(version)) as exported:
        state0 = exported.initial_state(2)
        whole, whole_state = exported.prefill(tokens, state0)
        scale = np.abs(whole).max()
        state = state0
        for t in range(tokens.shape[1]):
            logits, state = exported.step(tokens[:, t], state)
            assert np.abs(logits - whole[:, t]).max() < 1e-4 * scale, f"RWKV-{version}: step {t} != prefill position {t}"
        _, mid = exported.prefill(tokens[:, :5], state0)
        part, part_state = exported.prefill(tokens[:, 5:], mid)
        assert np.abs(part - whole[:, 5:]).max() < 1e-4 * scale, f"RWKV-{version}: split prefill differs"
        for name, b in whole_state.items():
            s = max(np.abs(b).max(), 1.0)
            assert np.abs(state[name] - b).max() < 1e-4 * s, f"RWKV-{version}: state {name} after steps != after prefill"
            assert np.abs(part_state[name] - b).max() < 1e-4 * s, f"RWKV-{version}: state {name} after split != whole"


@requires_shared
@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_tiny_graph_contract(tiny_exports: Callable[[str], Path], version: str) -> None:
    directory = tiny_exports(version)
    manifest = json.loads((directory / "manifest.json").read_text())
    op, layers, heads = OPS[version], 12, (1 if version == "7" else 8)
    size = 64 // heads
    for graph in ("prefill", "step"):
        model = onnx.load(directory / f"{graph}.onnx")
        onnx.checker.check_model(model, full_check=True)
        custom = [n for n in model.graph.node if n.domain == "rwkv"]
        assert len(custom) == layers and {n.op_type for n in custom} == {op}, f"{graph}: {[n.op_type for n in custom]}"
        for node in custom:
            attrs = {a.name: a.s.decode() for a in node.attribute}
            assert attrs == {"plugin_namespace": "rwkv", "plugin_version": "1"}, f"{graph}: {attrs}"
            assert len(node.input) == len(OPS_REGISTRY[op].inputs) and len(node.output) == 2
        assert [(f.domain, f.name) for f in model.functions] == [("rwkv", op)]
        assert list(model.functions[0].attribute) == ["plugin_namespace", "plugin_version"]
        assert {(o.domain, o.version) for o in model.opset_import} >= {("rwkv", 1)}
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        assert dims["tokens"] == (["batch", "seq"] if graph == "prefill" else ["batch"])
        assert dims["wkv"] == [layers, "batch", heads, size, size] and dims["x_att"] == [layers, "batch", 64]
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["rwkv.version"] == version and meta["wkv_op"] == op and meta["rwkv.wkv_state_layout"].startswith(LAYOUT[version])
        assert float(meta["rwkv.group_norm_eps"]) == manifest["model"]["group_norm_eps"]
        info = manifest["graphs"][graph]
        assert [t["name"] for t in info["inputs"]] == ["tokens", "x_att", "wkv", "x_ffn"] and info["wkv_nodes"] == layers
        assert [t["name"] for t in info["outputs"]] == ["logits", "x_att_out", "wkv_out", "x_ffn_out"]
    eps = 1e-5 if version.startswith("5") else 64e-5  # rwkv.cpp files of 5.x run at 1e-5
    assert manifest["model"] | {"parameters": 0} == {
        "version": version,
        "n_layer": layers,
        "n_embd": 64,
        "vocab_size": 256,
        "ffn_size": 224 if version == "6" else 256,
        "parameters": 0,
        "n_head": heads,
        "head_size": size,
        "group_norm_eps": eps,
        "wkv_state_layout": {"WKV5": wkv5, "WKV6": wkv6, "WKV7": wkv7}[op].STATE_LAYOUT,
    }
    assert [(s["name"], s["shape"], s["initial"], s["output"]) for s in manifest["state"]] == [
        ("x_att", [layers, "batch", 64], 0.0, "x_att_out"),
        ("wkv", [layers, "batch", heads, size, size], 0.0, "wkv_out"),
        ("x_ffn", [layers, "batch", 64], 0.0, "x_ffn_out"),
    ]
    assert manifest["export"]["wkv_op"] == op and manifest["tokenizer"]["kind"] == "bytes"


@requires_shared
@pytest.mark.slow
def test_tiny_reference_evaluator_runs_step(tiny_exports: Callable[[str], Path]) -> None:
    """onnx.reference, an executor independent of ORT, runs the v7 step graph as shipped."""
    from onnx.reference import ReferenceEvaluator

    directory = tiny_exports("7")
    model = build_model(load_checkpoint(tiny_model(TINY_STEMS["7"])), "float64")
    rng = np.random.default_rng(5)
    state = {
        "x_att": rng.standard_normal((12, 2, 64)),
        "wkv": rng.standard_normal((12, 2, 1, 64, 64)) * 0.3,
        "x_ffn": rng.standard_normal((12, 2, 64)),
    }
    tokens = np.array([3, 200])
    ref, ref_state = _ref_run(model, tokens[:, None], state)
    out = ReferenceEvaluator(str(directory / "step.onnx")).run(
        None, {"tokens": tokens, **{n: v.astype(np.float32) for n, v in state.items()}}
    )
    assert _rel(out[0], ref[:, 0]) < 1e-5, f"ReferenceEvaluator step: logits rel {_rel(out[0], ref[:, 0]):.2e}"
    assert _rel(out[2], ref_state["wkv"]) < 1e-5, f"ReferenceEvaluator step: wkv rel {_rel(out[2], ref_state['wkv']):.2e}"


@requires_shared
@pytest.mark.slow
def test_verify_cli_passes_on_exported_v5(tiny_exports: Callable[[str], Path]) -> None:
    from rwkv_export.cli import cli

    directory = tiny_exports("5.2")
    result = CliRunner().invoke(
        cli,
        [
            "verify",
            str(directory),
            "--checkpoint",
            str(tiny_model(TINY_STEMS["5.2"])),
            "--backends",
            "ort-cpu-float32,torch-float32",
            "--seq",
            "4",
            "--steps",
            "2",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ort-cpu-float32" in result.output and "torch-float32" in result.output


@requires_shared
@pytest.mark.slow
def test_run_cli_generates_the_expected_first_byte(tiny_exports: Callable[[str], Path]) -> None:
    """`rwkv-export run` on the 5.2 export, greedy: the first byte is rwkv.cpp's argmax ('p' = 112)."""
    from rwkv_export.cli import cli

    expected = np.fromfile(TINY / f"expected-logits-{TINY_STEMS['5.2']}.bin", np.float32)
    result = CliRunner().invoke(
        cli, ["run", str(tiny_exports("5.2")), "--tokens", "34,105,110", "--max-tokens", "3", "--temperature", "0", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(chr(int(expected.argmax()))), f"run printed {result.stdout!r}"


# --- small random checkpoints: float16, time_state, options ---------------------------------------


def _checkpoint(tmp: Path, version: str, seed: int, time_state: bool = False) -> Checkpoint:
    config, weights = random_weights(version, 2, 32, 61, seed=seed)
    if time_state:
        g = torch.Generator().manual_seed(seed)
        for i in range(config.n_layer):  # value-major on disk, [H, N(v), N(k)]
            weights[f"blocks.{i}.att.time_state"] = torch.randn(4, 8, 8, generator=g)
    return Checkpoint(config, weights, "random", tmp / f"v{version}.pth")


def test_v6_time_state_is_the_initial_state(tmp_path: Path) -> None:
    """A v6 time_state becomes DIR/initial_wkv.npy (key-major, batch axis 1), named by the manifest."""
    ckpt = _checkpoint(tmp_path, "6", seed=4, time_state=True)
    directory = export_checkpoint(ckpt, tmp_path / "out", wkv_form="chunked").directory  # covers the chunked form too
    manifest = json.loads((directory / "manifest.json").read_text())
    wkv_entry = next(s for s in manifest["state"] if s["name"] == "wkv")
    assert wkv_entry["initial_file"] == "initial_wkv.npy" and len(wkv_entry["initial_sha256"]) == 64
    assert all("initial_file" not in s for s in manifest["state"] if s["name"] != "wkv")
    model = build_model(ckpt, "float64")
    expected = model.initial_state(3)
    with ExportedModel(directory) as exported:
        state = exported.initial_state(3)
        assert state["wkv"].shape == (2, 3, 4, 8, 8) and state["wkv"].dtype == np.float32
        assert np.abs(state["wkv"] - expected.wkv.numpy()).max() < 1e-6 and np.abs(state["wkv"]).max() > 0.1
        tokens = np.random.default_rng(2).integers(0, 61, (3, 6))
        logits, new = exported.prefill(tokens)
        stepped = exported.initial_state(3)
        for t in range(tokens.shape[1]):
            step_logits, stepped = exported.step(tokens[:, t], stepped)
    assert manifest["export"]["wkv_form"] == "chunked"
    assert _rel(step_logits, logits) < 1e-5, f"chunked prefill vs scan steps: rel {_rel(step_logits, logits):.2e}"
    ref, ref_state = _ref_run(model, tokens, {n: t.numpy() for n, t in expected._asdict().items()})
    assert logits.shape == (3, 61) and _rel(logits, ref[:, -1]) < TOL["float32"], (
        f"time_state prefill: logits rel {_rel(logits, ref[:, -1]):.2e}"
    )
    assert _rel(new["wkv"], ref_state["wkv"]) < STATE_TOL_F32
    meta = {p.key: p.value for p in onnx.load(directory / "step.onnx").metadata_props}
    assert json.loads(meta["state_initial_files"]) == {"wkv": "initial_wkv.npy"}


@pytest.mark.parametrize("version", ["5.1", "7"])
def test_float16_export(tmp_path: Path, version: str) -> None:
    """--dtype float16: float16 weights and activations, float32 WKV and state, within 2e-2 (5.1: 3e-2)."""
    ckpt = _checkpoint(tmp_path, version, seed=7)
    directory = export_checkpoint(ckpt, tmp_path / "f16", dtype="float16", all_logits=True).directory
    model = build_model(ckpt, "float64")
    tokens = np.random.default_rng(3).integers(0, 61, (2, 9))
    with ExportedModel(directory) as exported:
        logits, state = exported.prefill(tokens)
        ref, ref_state = _ref_run(model, tokens, exported.initial_state(2))
        stepped = exported.initial_state(2)
        for t in range(tokens.shape[1]):
            step_logits, stepped = exported.step(tokens[:, t], stepped)
    # steps and prefill run the same float16 ops (the step graph is the prefill graph at T = 1)
    assert _rel(step_logits, logits[:, -1]) < 1e-3, (
        f"ORT float16 RWKV-{version}: steps != prefill, rel {_rel(step_logits, logits[:, -1]):.2e}"
    )
    tol = version_info(version).logits_rtol["float16"]  # 2e-2; 5.1: 3e-2
    assert logits.dtype == np.float32 and _rel(logits, ref) < tol, f"ORT float16 RWKV-{version}: logits rel {_rel(logits, ref):.2e}"
    for name, value in state.items():
        assert value.dtype == np.float32 and _rel(value, ref_state[name]) < tol, f"ORT float16 RWKV-{version}: {name}"
    inits = {t.data_type for t in onnx.load(directory / "prefill.onnx").graph.initializer}
    assert onnx.TensorProto.FLOAT16 in inits


def test_forms_a_version_lacks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RwkvExportError, match=r"WKV form 'gemm' is not available for RWKV-6 \(WKV6\); its forms: scan, chunked$"):
        export_checkpoint(_checkpoint(tmp_path, "6", seed=1), tmp_path / "out", wkv_form="gemm")
    with pytest.raises(RwkvExportError, match=r"WKV form 'chunked' is not available for RWKV-7 \(WKV7\); its forms: scan$"):
        export_checkpoint(_checkpoint(tmp_path, "7", seed=1), tmp_path / "out", wkv_form="chunked")
    assert not (tmp_path / "out").exists()
    with pytest.raises(RwkvExportError, match=r"WKV7 ONNX body: no chunked form"):
        wkv_function("WKV7", 18, "chunked")


def test_tensorrt_build_front_per_op() -> None:
    """WKV5/6/7 build through the Python plugin front by default ("auto" resolves to it; the AOT one
    only when asked for). A non-constant initial state (a v6 time_state) needs nothing of the engine:
    the TensorRT runner feeds the manifest's initial state, so build takes such exports too."""
    from rwkv_export.engine import plugin_front

    assert plugin_front("WKV6", "auto") == "python"
    assert plugin_front("WKV6", "python") == "python" and plugin_front("WKV6", "none") == "none"
    assert plugin_front("WKV6", "aot") == "aot"
    assert plugin_front("WKV4", "auto") == "auto"


def test_external_data_and_derived_step(tmp_path: Path) -> None:
    """One weight file (forced with a zero threshold) for both graphs; the step graph (the prefill
    graph at T = 1, step.py) takes tokens [batch] and returns logits [batch, vocab]."""
    ckpt = _checkpoint(tmp_path, "7", seed=9)
    directory = export_checkpoint(ckpt, tmp_path / "ext", all_logits=True, external_data_threshold=0).directory
    manifest = json.loads((directory / "manifest.json").read_text())
    assert [manifest["graphs"][g]["external_data"] for g in ("prefill", "step")] == [["weights.data"], ["weights.data"]]
    step = onnx.load(directory / "step.onnx", load_external_data=False)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*step.graph.input, *step.graph.output]}
    assert dims["tokens"] == ["batch"] and dims["logits"] == ["batch", 61] and dims["wkv_out"] == [2, "batch", 4, 8, 8]
    model = build_model(ckpt, "float64")
    tokens = np.array([[4, 50, 7], [9, 0, 60]])
    with ExportedModel(directory) as exported:
        state = exported.initial_state(2)
        for t in range(3):
            logits, state = exported.step(tokens[:, t], state)
        ref, ref_state = _ref_run(model, tokens, exported.initial_state(2))
    assert logits.shape == (2, 61) and _rel(logits, ref[:, -1]) < TOL["float32"], f"external-data step: rel {_rel(logits, ref[:, -1]):.2e}"
    assert _rel(state["wkv"], ref_state["wkv"]) < STATE_TOL_F32


@pytest.mark.skipif(importlib.util.find_spec("rwkv") is None, reason="needs the `rwkv` package (world vocabulary)")
def test_world_vocabulary_model_runs_with_the_world_tokenizer(tmp_path: Path) -> None:
    """A v6 checkpoint with the 65536-token world vocabulary: the manifest names the world tokenizer,
    and `run --prompt` feeds its ids: greedy ids equal the float64 reference's on those ids."""
    from rwkv_export.cli import cli
    from rwkv_export.tokenizer import WorldTokenizer

    config, weights = random_weights("6", 2, 32, 65536, seed=4)
    ckpt = Checkpoint(config, weights, "random", tmp_path / "world.pth")
    directory = export_checkpoint(ckpt, tmp_path / "out").directory
    assert json.loads((directory / "manifest.json").read_text())["tokenizer"]["kind"] == "world"
    result = CliRunner().invoke(
        cli, ["run", str(directory), "--prompt", "Hello world", "--max-tokens", "4", "--temperature", "0", "--ids", "-q"]
    )
    assert result.exit_code == 0, result.output
    got = [int(i) for i in result.stdout.replace(",", " ").split()]

    model = build_model(ckpt, "float64")
    ids = WorldTokenizer().encode("Hello world")
    logits, state = model.forward_sequence(torch.tensor([ids]), model.initial_state(1))
    want = []
    for _ in range(4):
        want.append(int(logits[0].argmax()))
        logits, state = model.forward_step(torch.tensor([want[-1]]), state)
    assert got == want, f"run gave {got}, the reference on the world ids {ids} gives {want}"
