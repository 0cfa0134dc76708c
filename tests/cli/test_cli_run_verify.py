"""`rwkv-export run` and `rwkv-export verify` end to end, through click's CliRunner.

Exports are the slow part (~10 s each), so the module makes three: the float32 and float16 graphs
that `verify CHECKPOINT --export-dir` writes (reused by every other test), and one 20B-tokenizer model.
Broken exports are copies of the healthy one with one planted fault each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import helper, numpy_helper

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.cli import cli
from rwkv_export.fileio import sha256_file
from rwkv_export.generate import Sampling, Stats, generate
from rwkv_export.parity.backends import TorchBackend
from rwkv_export.tokenizer import ByteTokenizer, HuggingFaceTokenizer
from tests.conftest import TOKENIZER_20B, make_checkpoint

requires_20b = pytest.mark.skipif(not TOKENIZER_20B.is_file(), reason=f"needs {TOKENIZER_20B} (../shared is absent)")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def reference_greedy(ckpt_path: Path, prompts: list[list[int]], n: int) -> list[list[int]]:
    """The torch float32 reference, each prompt alone (the batching under test is not used here)."""
    backend = TorchBackend(load_checkpoint(ckpt_path), "float32")
    out = []
    for prompt in prompts:
        stats = Stats()
        for _ in generate(backend, [prompt], n, Sampling(temperature=0), stats):
            pass
        out.append(stats.generated[0])
    return out


@pytest.fixture(scope="module")
def byte_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("cli") / "bytes-2x32.pth", layers=2, embd=32, vocab=256, seed=11)


@pytest.fixture(scope="module")
def verified(tmp_path_factory: pytest.TempPathFactory, byte_ckpt: Path) -> tuple[Result, Path, Path]:
    root = tmp_path_factory.mktemp("verified")
    report = root / "parity.json"
    result = invoke("verify", byte_ckpt, "--export-dir", root / "exports", "--json", report, "--seq", 8, "--steps", 4)
    return result, root / "exports", report


# --- verify --------------------------------------------------------------------------------------


def test_verify_passes_on_healthy_exports(verified: tuple[Result, Path, Path]) -> None:
    result, exports, report_file = verified
    assert result.exit_code == 0, result.output
    for name in ("torch-float32", "torch-float16", "ort-cpu-float32", "ort-cpu-float16"):
        assert any(line.startswith(name) and "PASS" in line for line in result.stdout.splitlines()), f"{name}:\n{result.stdout}"
    report = json.loads(report_file.read_text())
    assert report["verdict"] == "pass"
    statuses = {b["name"]: b["status"] for b in report["backends"]}
    assert statuses["ort-cpu-float16"] == "pass" and statuses["tensorrt-float32"] == "skipped"
    point = next(b for b in report["backends"] if b["name"] == "ort-cpu-float32")["points"][1]
    assert point["label"] == "step 1" and set(point["state"]) == {"x_att", "aa", "bb", "pp", "x_ffn"}
    assert {"max_abs", "mean_abs", "median_abs", "p99_abs", "max_rel", "p99_rel"} <= set(point["logits"]["error"])
    assert (exports / "float32" / "manifest.json").is_file() and (exports / "float16" / "manifest.json").is_file()


def _broken_copy(verified: tuple[Result, Path, Path], tmp_path: Path) -> Path:
    out = tmp_path / "broken"
    shutil.copytree(verified[1] / "float32", out)
    return out


def reseal(directory: Path) -> None:
    """Record the graphs' new sha256 in the manifest: the planted fault then models an exporter bug
    (a wrong graph, consistently recorded), which only parity can find; without this, the manifest's
    file check refuses the changed file (test_manifest_fuzz.py covers that)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    for graph in manifest["graphs"].values():
        graph["sha256"] = {name: sha256_file(directory / name) for name in graph["sha256"]}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def perturb_weight(path: Path, name: str, delta: float) -> None:
    model = onnx.load(path)
    init = next(i for i in model.graph.initializer if i.name == name)
    array = numpy_helper.to_array(init).copy()
    array.flat[0] += delta
    init.CopyFrom(numpy_helper.from_array(array, name))
    onnx.save(model, path)
    reseal(path.parent)


def swap_outputs(path: Path, a: str, b: str) -> None:
    """State-contract violation: the graph writes a's value to b's output and vice versa."""
    model = onnx.load(path)
    rename = {a: b, b: a}
    for node in model.graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
    onnx.save(model, path)
    reseal(path.parent)


def drop_carry(path: Path, name: str) -> None:
    """State-contract violation: `name` is passed through unchanged instead of updated."""
    model = onnx.load(path)
    for node in model.graph.node:
        node.output[:] = [o + "_dropped" if o == name + "_out" else o for o in node.output]
    model.graph.node.append(helper.make_node("Identity", [name], [name + "_out"]))
    onnx.save(model, path)
    reseal(path.parent)


@pytest.mark.parametrize("graph, where", [("step", "step 1"), ("prefill", "prefill")])
def test_verify_fails_on_a_corrupted_weight(verified: tuple[Result, Path, Path], tmp_path: Path, graph: str, where: str) -> None:
    broken = _broken_copy(verified, tmp_path)
    perturb_weight(broken / f"{graph}.onnx", "blocks.1.att.time_mix_v", 0.5)
    result = invoke("verify", broken, "--backends", "ort-cpu", "--seq", 8, "--steps", 3, "-q")
    assert result.exit_code == 1, result.output
    assert f"first diverges at {where}: state 'aa' layer 1" in result.stdout, result.stdout
    assert "FAIL" in result.stdout


@pytest.mark.parametrize(
    "fault, expected",
    [
        (lambda d: swap_outputs(d / "step.onnx", "aa_out", "bb_out"), "first diverges at step 1: state 'aa' layer 0"),
        (lambda d: drop_carry(d / "prefill.onnx", "x_ffn"), "first diverges at prefill: state 'x_ffn' layer 0"),
    ],
    ids=["swapped-step-outputs", "dropped-prefill-carry"],
)
def test_verify_fails_on_a_state_contract_violation(
    verified: tuple[Result, Path, Path], byte_ckpt: Path, tmp_path: Path, fault, expected: str
) -> None:  # type: ignore[no-untyped-def]
    broken = _broken_copy(verified, tmp_path)
    fault(broken)
    result = invoke("verify", broken, "--checkpoint", byte_ckpt, "--backends", "ort-cpu-float32", "--seq", 6, "--steps", 2, "-q")
    assert result.exit_code == 1, result.output
    assert expected in result.stdout, result.stdout


def test_verify_tolerance_override_turns_a_pass_into_a_fail(verified: tuple[Result, Path, Path]) -> None:
    result = invoke("verify", verified[1] / "float32", "--backends", "ort-cpu", "--rtol", "float32=0", "--seq", 4, "--steps", 1, "-q")
    assert result.exit_code == 1 and "first diverges at prefill" in result.stdout, result.output


# --- run -----------------------------------------------------------------------------------------

BATCHES = [["Hello"], ["Hi", "Hello there, world"], ["a", "The quick brown fox", "é日"]]


@pytest.mark.parametrize("prompts", BATCHES, ids=lambda b: f"batch{len(b)}")
def test_run_greedy_equals_reference(verified: tuple[Result, Path, Path], byte_ckpt: Path, prompts: list[str]) -> None:
    args = [a for p in prompts for a in ("--prompt", p)]
    result = invoke("run", verified[1] / "float32", *args, "--temperature", 0, "--max-tokens", 10, "--ids", "-q")
    assert result.exit_code == 0, result.output
    got = [[int(t) for t in line.split(",")] for line in result.stdout.splitlines()]
    assert got == reference_greedy(byte_ckpt, [list(p.encode()) for p in prompts], 10)


def test_run_streams_text_and_reports_throughput(verified: tuple[Result, Path, Path], byte_ckpt: Path) -> None:
    result = invoke("run", verified[1] / "float32", "--tokens", "72,105", "--temperature", 0, "--max-tokens", 8)
    assert result.exit_code == 0, result.output
    expected = ByteTokenizer().decode(reference_greedy(byte_ckpt, [[72, 105]], 8)[0])
    assert result.stdout_bytes.decode() == expected + "\n"  # bytes: .stdout folds \r\n, which random text may hold
    assert "tok/s" in result.stderr and "ms/token" in result.stderr


@pytest.fixture(scope="module")
def neox_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from rwkv_export.export import export_checkpoint

    root = tmp_path_factory.mktemp("neox")
    ckpt = make_checkpoint(root / "neox-1x32.pth", layers=1, embd=32, vocab=50277, seed=2)
    export_checkpoint(ckpt, root / "out", tokenizer=TOKENIZER_20B)
    return ckpt, root / "out"


@requires_20b
def test_run_20b_tokenizer_greedy(neox_export: tuple[Path, Path]) -> None:
    ckpt, out = neox_export
    tok = HuggingFaceTokenizer(TOKENIZER_20B)
    prompts = ["The capital of France is", "RWKV"]
    expected = reference_greedy(ckpt, [tok.encode(p) for p in prompts], 6)
    one = invoke("run", out, "--prompt", prompts[0], "--temperature", 0, "--max-tokens", 6, "-q")
    assert one.exit_code == 0, one.output
    assert one.stdout_bytes.decode() == tok.decode(expected[0]) + "\n"
    both = invoke("run", out, "--prompt", prompts[0], "--prompt", prompts[1], "--temperature", 0, "--max-tokens", 6, "--ids", "-q")
    assert [[int(t) for t in line.split(",")] for line in both.stdout.splitlines()] == expected


# --- bad input: one line, exit 2 -----------------------------------------------------------------


def _assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_bad_input_one_liners(verified: tuple[Result, Path, Path], tmp_path: Path) -> None:
    good = verified[1] / "float32"
    old = tmp_path / "old"
    shutil.copytree(good, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "rwkv-export/0"}))
    cases = [
        (("run", tmp_path / "missing", "--prompt", "x"), "does not exist"),
        (("run", old, "--prompt", "x"), "manifest format 'rwkv-export/0' is not supported"),
        (("run", good, "--prompt", ""), "tokenizes to no tokens"),
        (("run", good, "--tokens", "1,2,256"), "token id 256 is out of range"),
        (("run", good, "--tokens", "1,x"), "comma-separated integers"),
        (("run", good, "--prompt", "x", "--provider", "cuda"), "CUDAExecutionProvider"),
        (("run", good), "--prompt TEXT or as --tokens IDS"),
        (("verify", tmp_path / "missing.pth"), "missing.pth"),
        (("verify", good, "--checkpoint", tmp_path / "nope.pth"), "pass --checkpoint FILE"),
        (("verify", good, "--rtol", "float17=1"), "--rtol 'float17=1'"),
        (("verify", good, "--backends", "onnx"), "matches no backend"),
    ]
    for args, fragment in cases:
        _assert_one_line_error(invoke(*args), fragment)


def test_help_states_tolerances_and_examples() -> None:
    verify_help = invoke("verify", "--help").output
    assert "Examples:" in verify_help and "float32: logits rtol 1e-05" in " ".join(verify_help.split())
    assert "Examples:" in invoke("run", "--help").output


def test_json_report_is_finite_numbers(verified: tuple[Result, Path, Path]) -> None:
    report = json.loads(verified[2].read_text())
    errors = [b["summary"]["logits_max_abs"] for b in report["backends"] if b["status"] == "pass"]
    assert errors and all(np.isfinite(e) for e in errors)


def test_device_state_io_binding_matches_plain_run(verified: tuple[Result, Path, Path]) -> None:
    """The IO-binding path CUDA uses (state kept as OrtValues between calls), exercised on the CPU."""
    from rwkv_export.runtime import ExportedModel

    prompts = [[1, 2, 3], [200], [7, 8, 9, 10]]
    results = []
    for device_state in (False, True):
        model = ExportedModel(verified[1] / "float32", "cpu", device_state=device_state)
        stats = Stats()
        with model:
            for _ in generate(model, prompts, 6, Sampling(temperature=0), stats):
                pass
            _, state = model.step(np.array([1, 2, 3]), model.initial_state(3))
        assert all(isinstance(v, np.ndarray) != device_state for v in state.values())
        results.append((stats.generated, model.to_host(state)))
    assert results[0][0] == results[1][0]
    for name, value in results[0][1].items():
        np.testing.assert_array_equal(value, results[1][1][name], err_msg=name)


def test_tensorrt_backend_skipped_with_reason_without_tensorrt(
    verified: tuple[Result, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engines recorded but TensorRT missing: verify reports 'skipped: <why>', run --provider tensorrt refuses in one line."""
    from rwkv_export.kernels import trt_compat

    def missing(target: str | None = None) -> None:
        raise trt_compat.TensorRTUnavailable("tensorrt-rtx is not installed: pip install 'rwkv-export[tensorrt]'")

    monkeypatch.setattr(trt_compat, "load", missing)
    built = _broken_copy(verified, tmp_path)
    manifest = json.loads((built / "manifest.json").read_text())
    for graph in ("prefill", "step"):
        (built / f"{graph}.plan").write_bytes(b"not an engine")
    manifest["engines"] = {
        g: {
            "file": f"{g}.plan",
            "sha256": sha256_file(built / f"{g}.plan"),
            "target": "tensorrt-rtx",
            "tensorrt_version": "1.0",
            "plugin": "python",
            "ptx_arch": None,
            "compute_capabilities": [],
            "profile": {"tokens": [[1], [1], [1]]},
            "plugin_layers": 2,
        }
        for g in ("prefill", "step")
    }
    (built / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("verify", built, "--backends", "tensorrt,ort-cpu-float32", "--seq", 4, "--steps", 1, "-q")
    assert result.exit_code == 0, result.output
    assert "tensorrt-float32: skipped: tensorrt-rtx is not installed" in result.stdout
    _assert_one_line_error(invoke("run", built, "--prompt", "x", "--provider", "tensorrt"), "cannot run the TensorRT engines")
