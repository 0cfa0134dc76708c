"""TensorRT-RTX engine builds on the CPU: the WKV4 plugin mapped, shapes per profile, plans serialized.

TensorRT-RTX builds engines without a GPU, so these run in CPU CI (installed by the test extra).
They assert what the real library did: the layer types the ONNX parser produced, the shapes our
plugin's configure_plugin received for each profile (recorded in the build child's report), and
the plugin fields inside the serialized plan. Nothing here mocks TensorRT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner

from rwkv_export import engine
from rwkv_export.cli import cli
from rwkv_export.errors import RwkvExportError
from rwkv_export.fileio import sha256_file
from rwkv_export.kernels import trt_compat, trt_plugin
from rwkv_export.ops import wkv4 as op
from rwkv_export.ops.registry import DOMAIN, OPS, PLUGIN_NAMESPACE, PLUGIN_VERSION
from tests.conftest import TINY, make_checkpoint, requires_shared, tiny_model

HAVE_RTX = "tensorrt-rtx" in trt_compat.available_targets()
requires_rtx = pytest.mark.skipif(not HAVE_RTX, reason="needs TensorRT-RTX: pip install 'rwkv-export[tensorrt]'")
RTX = "tensorrt-rtx"
OPTIONS = engine.BuildOptions(target=RTX, max_batch=4, opt_batch=2, max_seq=32, opt_seq=8)
C = 8  # plugin-only model width


# --- helpers ---------------------------------------------------------------------------------------


def wkv_node_names(onnx_path: Path) -> list[str]:
    model = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == op.OP_TYPE and n.domain == DOMAIN]


def configure_calls(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in report["plugin_events"] if e["method"] == "configure_plugin"]


def plugin_layers(report: dict[str, Any]) -> list[str]:
    return [layer["name"] for layer in report["layers"] if layer["type"] == "PLUGIN_V3"]


def export_model(checkpoint: Path, out: Path) -> Path:
    from rwkv_export.export import export_checkpoint

    export_checkpoint(checkpoint, out, force=True)
    return out


def build_all(model_dir: Path, options: engine.BuildOptions = OPTIONS) -> dict[str, dict[str, Any]]:
    reports: dict[str, dict[str, Any]] = {}
    engine.build(model_dir, options, on_report=lambda graph, report: reports.__setitem__(graph, report))
    return reports


def expected_wkv_bounds(graph: str, channels: int, options: engine.BuildOptions) -> dict[str, list[list[list[int]]]]:
    """What configure_plugin must see for k and aa: [min, opt, max] per input, from the profile."""
    (b0, b1, b2), (s0, s1, s2) = options.dim_bounds()["batch"], options.dim_bounds()["seq"]
    seq = (s0, s1, s2) if graph == "prefill" else (1, 1, 1)  # the step graph feeds [B, 1, C]
    return {
        "time_decay": [[channels]] * 3,
        "k": [[b0, seq[0], channels], [b1, seq[1], channels], [b2, seq[2], channels]],
        "aa": [[b0, channels], [b1, channels], [b2, channels]],
    }


# --- no TensorRT needed ----------------------------------------------------------------------------


def test_modules_import_without_importing_tensorrt() -> None:
    code = (
        "import sys\n"
        "import rwkv_export.kernels.trt_compat, rwkv_export.kernels.trt_plugin, rwkv_export.kernels.trt_aot, rwkv_export.engine\n"
        "import rwkv_export.runtime.tensorrt_runner, rwkv_export.cli.build_cmd\n"
        "bad = [m for m in ('tensorrt', 'tensorrt_rtx_bindings', 'tensorrt_rtx_libs') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_cli_without_tensorrt_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(trt_compat, "_find_module", lambda target: None)  # as if neither wheel were installed
    result = CliRunner().invoke(cli, ["build", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'rwkv-export[tensorrt]'" in lines[0], lines


def test_build_help_has_examples() -> None:
    result = CliRunner().invoke(cli, ["build", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "--compute-capability" in result.output


def test_output_rule_and_shape_checks() -> None:
    spec = OPS["WKV4"]
    assert trt_plugin.outputs_like(list(op.INPUTS), "WKV4") == ["k", "aa", "aa", "aa"]
    shapes = [[C], [C], [2, 5, C], [2, 5, C], [2, C], [2, C], [2, C]]
    assert spec.check_shapes(shapes) == (2, 5, C)
    assert spec.check_shapes([[C], [C], [-1, -1, C], [-1, -1, C], [-1, C], [-1, C], [-1, C]]) == (-1, -1, C)
    with pytest.raises(ValueError, match="input aa must have shape"):
        spec.check_shapes([[C], [C], [2, 5, C], [2, 5, C], [3, C], [2, C], [2, C]])
    assert spec.kernel.entry.format(launch=spec.kernel.launches[0], n=0, io="f32") == "wkv4_seq_f32"  # the AOT front's entry


def test_profile_from_manifest_dims() -> None:
    graph = {
        "inputs": [
            {"name": "tokens", "shape": ["batch", "seq"]},
            {"name": "aa", "shape": [3, "batch", 64]},
            {"name": "fixed", "shape": [4]},
        ]
    }
    assert engine.profile_for(graph, OPTIONS.dim_bounds()) == {
        "tokens": [[1, 1], [2, 8], [4, 32]],
        "aa": [[3, 1, 64], [3, 2, 64], [3, 4, 64]],
    }
    with pytest.raises(RwkvExportError, match="symbolic dim 'beam'"):
        engine.profile_for({"inputs": [{"name": "x", "shape": ["beam"]}]}, OPTIONS.dim_bounds())


def test_compute_capability_names() -> None:
    assert engine.normalize_compute_capabilities(("80", "sm_86", "SM89", "sm80"), RTX) == ("sm80", "sm86", "sm89")
    with pytest.raises(RwkvExportError, match="sm90"):
        engine.normalize_compute_capabilities(("sm90",), RTX)
    with pytest.raises(RwkvExportError, match="applies to --target tensorrt-rtx"):
        engine.normalize_compute_capabilities(("sm80",), "tensorrt")


def test_workspace_sizes() -> None:
    from rwkv_export.cli.build_cmd import parse_size

    assert (parse_size("512M"), parse_size("2G"), parse_size("4096"), parse_size(None)) == (512 << 20, 2 << 30, 4096, None)
    with pytest.raises(RwkvExportError, match="not a size"):
        parse_size("lots")


# --- TensorRT-RTX: the .so quirk -------------------------------------------------------------------


@requires_rtx
def test_rtx_library_link_is_private_and_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = trt_compat.rtx_library_dir()
    if first is None:
        pytest.skip(reason="this TensorRT-RTX wheel ships libtensorrt_rtx.so itself: no link needed")
    assert first == trt_compat.rtx_library_dir()  # second call: same dir, nothing rewritten
    link = first / trt_compat.RTX_LIB
    assert link.is_symlink() and link.resolve().name == f"{trt_compat.RTX_LIB}.1"
    assert str(tmp_path) in str(first)  # in the cache, not in site-packages
    assert trt_compat.subprocess_env(RTX)["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(first)


@requires_rtx
def test_plugin_mapping_aborts_without_the_link(tmp_path: Path) -> None:
    """Why builds run in a child with the link on LD_LIBRARY_PATH: without it the parser terminates."""
    if trt_compat.rtx_library_dir() is None:
        pytest.skip(reason="this TensorRT-RTX wheel ships libtensorrt_rtx.so itself: nothing aborts")
    from rwkv_export.ops.onnx_function import wkv_model

    onnx.save(wkv_model("WKV4"), str(tmp_path / "wkv4.onnx"))
    job = {
        "target": RTX,
        "onnx": str(tmp_path / "wkv4.onnx"),
        "plan": str(tmp_path / "x.plan"),
        "profile": {},
        "workspace": None,
        "compute_capabilities": [],
        "plugin": "python",
        "ptx_arch": "sm_75",
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-m", "rwkv_export.engine", str(tmp_path / "job.json"), str(tmp_path / "r.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and not (tmp_path / "r.json").exists(), proc.stderr[-500:]


# --- TensorRT-RTX: the plugin on its own -------------------------------------------------------------


@requires_rtx
def test_creator_registers_once_in_namespace_rwkv() -> None:
    trt = trt_compat.load(RTX)
    first, second = trt_plugin.register(trt), trt_plugin.register(trt)  # e.g. a prefill and a step runner
    assert first["WKV4"] is second["WKV4"]
    found = trt.get_plugin_registry().get_creator(op.OP_TYPE, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    assert (found.name, found.plugin_namespace, found.plugin_version) == ("WKV4", "rwkv", "1")
    assert len(found.field_names) == 0  # the node's attributes are not plugin fields


@requires_rtx
def test_single_wkv4_node_becomes_our_plugin(tmp_path: Path) -> None:
    from rwkv_export.ops.onnx_function import wkv_model

    onnx_path = tmp_path / "wkv4.onnx"
    onnx.save(wkv_model("WKV4"), str(onnx_path))
    bc, btc = [[1, C], [2, C], [4, C]], [[1, 1, C], [2, 8, C], [4, 32, C]]
    profile = {"time_decay": [[C]] * 3, "time_first": [[C]] * 3, "k": btc, "v": btc, "aa": bc, "bb": bc, "pp": bc}
    report = engine.build_graph(onnx_path, tmp_path / "wkv4.plan", profile, OPTIONS, RTX, "python")

    assert [(layer["name"], layer["type"]) for layer in report["layers"]] == [("wkv4", "PLUGIN_V3")]
    (call,) = configure_calls(report)
    for bound, j in (("min", 0), ("opt", 1), ("max", 2)):
        assert call[bound] == [profile[name][j] for name in op.INPUTS], bound
    assert call["outputs"] == [[-1, -1, C], [-1, C], [-1, C], [-1, C]]  # dynamic B, T; C from time_decay
    methods = {e["method"] for e in report["plugin_events"]}
    assert {"create_plugin", "get_output_data_types", "get_output_shapes", "configure_plugin", "get_fields_to_serialize"} <= methods
    plan = (tmp_path / "wkv4.plan").read_bytes()
    for field in (*trt_plugin.serialized_fields("WKV4"), trt_plugin.kernel_sha256("WKV4"), "WKV4"):
        assert field.encode() in plan, f"plan lacks {field!r}"


# --- TensorRT-RTX: whole models ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trt-random")
    return export_model(make_checkpoint(root / "r.pth", layers=3, embd=64, vocab=97), root / "model")


@pytest.fixture(scope="module")
def tiny_real_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tiny_model("4v0-660K"), tmp_path_factory.mktemp("trt-tiny") / "model")


MODELS = ["random_model", pytest.param("tiny_real_model", marks=requires_shared)]


@requires_rtx
@pytest.mark.slow
@pytest.mark.parametrize("model_fixture", MODELS)
def test_model_engines_map_every_wkv_node(model_fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(model_fixture)
    reports = build_all(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    n_layer, channels = manifest["model"]["n_layer"], manifest["model"]["n_embd"]
    for graph in engine.GRAPHS:
        report, entry = reports[graph], manifest["engines"][graph]
        nodes = wkv_node_names(model_dir / manifest["graphs"][graph]["file"])
        # One PLUGIN_V3 layer per layer, each the WKV node itself (none inlined).
        assert len(nodes) == n_layer, (graph, nodes)
        assert sorted(plugin_layers(report)) == sorted(nodes), graph
        # configure_plugin: once per plugin per profile, with that profile's min/opt/max.
        calls = configure_calls(report)
        assert len(calls) == n_layer, (graph, len(calls))
        want = expected_wkv_bounds(graph, channels, OPTIONS)
        for call in calls:
            for name, triple in want.items():
                i = op.INPUTS.index(name)
                assert [call["min"][i], call["opt"][i], call["max"][i]] == triple, (graph, name)
        # The plan is on disk, recorded with its hash, and carries the plugin's fields.
        plan_path = model_dir / entry["file"]
        assert entry["sha256"] == sha256_file(plan_path) and entry["target"] == RTX and entry["plugin"] == "python"
        assert entry["plugin_layers"] == n_layer
        assert entry["profile"] == engine.profile_for(manifest["graphs"][graph], OPTIONS.dim_bounds())
        plan = plan_path.read_bytes()
        assert plan.count(b"kernel_sha256") >= n_layer and trt_plugin.kernel_sha256("WKV4").encode() in plan, graph


@requires_rtx
@pytest.mark.slow
def test_rebuild_one_graph_keeps_the_other_entry(random_model: Path) -> None:
    build_all(random_model)
    before = json.loads((random_model / "manifest.json").read_text())
    options = engine.BuildOptions(target=RTX, max_batch=2, max_seq=16)
    engine.build(random_model, options, graphs=("step",))
    after = json.loads((random_model / "manifest.json").read_text())
    assert after["engines"]["prefill"] == before["engines"]["prefill"]
    assert after["engines"]["step"]["profile"]["tokens"] == [[1], [1], [2]]
    assert after["graphs"] == before["graphs"]  # only "engines" is rewritten


@requires_rtx
@pytest.mark.slow
def test_failed_build_changes_nothing(random_model: Path) -> None:
    build_all(random_model)
    before = {p.name: p.read_bytes() for p in random_model.iterdir()}
    bad = engine.BuildOptions(target=RTX, max_batch=2, max_seq=0)  # seq max 0 < min 1: TensorRT rejects the profile
    with pytest.raises(RwkvExportError, match="TensorRT build of prefill.onnx failed"):
        engine.build(random_model, bad)
    assert {p.name: p.read_bytes() for p in random_model.iterdir()} == before  # plans, manifest, no leftovers


def _with_function(model_dir: Path, out_dir: Path, **form_options: Any) -> Path:
    """A copy of the exported model whose rwkv::WKV4 function is built with `form_options`."""
    from rwkv_export.ops.onnx_function import wkv_function

    out_dir.mkdir(exist_ok=True)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for graph in manifest["graphs"].values():
        model = onnx.load(str(model_dir / graph["file"]))
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == op.OP_TYPE)]
        del model.functions[:]
        model.functions.extend([*kept, wkv_function("WKV4", opset, **form_options)])
        onnx.save(model, str(out_dir / graph["file"]))
        graph["sha256"] = {graph["file"]: sha256_file(out_dir / graph["file"])}  # the new body, recorded as an export would
    (out_dir / "manifest.json").write_text(json.dumps(manifest))
    return out_dir


@requires_rtx
@pytest.mark.slow
def test_inlined_function_fallback_builds(random_model: Path, tmp_path: Path) -> None:
    """No plugin: the parser inlines the model-local function. The exported body's If(T == 1) trips
    TensorRT-RTX 1.7 (graphScope.cpp assertion), so `build --plugin none` parses a copy without it."""
    model_dir = _with_function(random_model, tmp_path / "asis")  # the exporter's default body, If included
    reports = build_all(model_dir, engine.BuildOptions(target=RTX, max_batch=2, max_seq=16, plugin="none"))
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for graph, report in reports.items():
        types = {layer["type"] for layer in report["layers"]}
        assert not plugin_layers(report) and not report["plugin_events"], graph
        assert {"RECURRENCE", "ITERATOR"} & types or "LOOP_OUTPUT" in types, (graph, sorted(types))  # the Scan
        assert "CONDITION" not in types and "CONDITIONAL_INPUT" not in types, (graph, sorted(types))
        assert manifest["engines"][graph]["plugin"] == "none" and (model_dir / f"{graph}.plan").stat().st_size > 0


@requires_rtx
@pytest.mark.slow
def test_cli_build_for_chosen_compute_capabilities(random_model: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "build",
            str(random_model),
            "--target",
            RTX,
            "--graph",
            "step",
            "--compute-capability",
            "sm86",
            "--max-batch",
            "2",
            "--json",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output)["step"]
    assert entry["compute_capabilities"] == ["sm86"] and entry["plugin_layers"] == 3
    bad = CliRunner().invoke(cli, ["build", str(random_model), "--target", RTX, "--compute-capability", "sm90"])
    assert bad.exit_code == 2 and "sm90" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_cli_reports_a_missing_manifest(tmp_path: Path) -> None:
    if not trt_compat.available_targets():
        pytest.skip(reason="no TensorRT flavour installed: the missing-TensorRT message comes first")
    result = CliRunner().invoke(cli, ["build", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest.json" in result.output


def test_tiny_model_path_is_known() -> None:
    """The shared model the slow tests use, named here so a rename fails loudly, not as a skip."""
    if not TINY.is_dir():
        pytest.skip(reason=f"{TINY} is absent in this clone")
    assert tiny_model("4v0-660K").is_file()
