"""`rwkv-export triton`: every config.pbtxt parsed with Triton's ModelConfig protobuf and checked
against the manifest, and the repository driven through a replay of the sequence batcher's
documented semantics (tests/serving/triton_replay.py; not a server: none is installable here) over ONNX
Runtime, compared with `rwkv-export run`.

Exports: random RWKV-4 (pp = -1e38: an initial_state data file), v5.2, v6 with a time_state (a data
file from initial_wkv.npy) and v7, 2 x 32 each, shared with the other serving tests of the session.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result

from rwkv_export.cli import cli
from rwkv_export.runtime import ExportedModel
from tests.serving.serving_exports import exported, random_checkpoint
from tests.serving.triton_replay import (
    Request,
    SequenceBatcherReplay,
    parse_config,
    type_name,
    type_name_kind,
)

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (the test extra) for Triton's ModelConfig")

TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}
CASES = {"v4": ("4", False), "v5.2": ("5.2", False), "v6-time-state": ("6", True), "v7": ("7", False)}


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module", params=list(CASES))
def export_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    version, time_state = CASES[request.param]
    return exported(tmp_path_factory, random_checkpoint(tmp_path_factory, version, time_state=time_state))


@pytest.fixture(scope="module")
def repo(export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    result = invoke("triton", export_dir, "-o", out, "--max-batch-size", 4, "-q")
    assert result.exit_code == 0, result.output
    return out


def manifest_of(export_dir: Path) -> dict:
    return json.loads((export_dir / "manifest.json").read_text())


def run_greedy(export_dir: Path, prompt: list[int], n: int) -> list[int]:
    result = invoke("run", export_dir, "--tokens", ",".join(map(str, prompt)), "--max-tokens", n, "--temperature", 0, "--ids", "-q")
    assert result.exit_code == 0, result.output
    return [int(t) for t in result.stdout.strip().split(",")]


# --- schema ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", ["prefill", "step"])
def test_config_matches_the_manifest(repo: Path, export_dir: Path, graph: str) -> None:
    manifest = manifest_of(export_dir)
    config = parse_config(repo / f"rwkv_{graph}")
    assert config.name == f"rwkv_{graph}" and config.backend == "onnxruntime" and config.max_batch_size == 4
    graph_info = manifest["graphs"][graph]
    tokens = next(t for t in graph_info["inputs"] if t["role"] == "tokens")
    assert [i.name for i in config.input] == ["tokens"] and type_name(config.input[0].data_type) == "TYPE_INT64"
    if graph == "prefill":
        assert tokens["shape"] == ["batch", "seq"] and list(config.input[0].dims) == [-1]
    else:
        assert tokens["shape"] == ["batch"] and list(config.input[0].dims) == [1] and list(config.input[0].reshape.shape) == []
    logits = next(t for t in graph_info["outputs"] if t["role"] == "logits")
    assert [o.name for o in config.output] == ["logits"]
    assert list(config.output[0].dims) == [d for d in logits["shape"] if d != "batch"]
    assert type_name(config.output[0].data_type) == TYPES[logits["dtype"]]
    states = config.sequence_batching.state
    assert [(s.input_name, s.output_name) for s in states] == [(s["name"], s["output"]) for s in manifest["state"]]
    for state, spec in zip(states, manifest["state"]):
        expected = [d for d in spec["shape"] if d != "batch"]  # batch-first in the served model: dims drop it
        assert list(state.dims) == expected and type_name(state.data_type) == TYPES[spec["dtype"]]
        init = state.initial_state[0]
        assert list(init.dims) == expected and type_name(init.data_type) == TYPES[spec["dtype"]]
        constant_zero = not spec.get("initial_file") and spec["initial"] == 0.0
        assert init.WhichOneof("state_data") == ("zero_data" if constant_zero else "data_file")
    kinds = {c.name: type_name_kind(c.control[0].kind) for c in config.sequence_batching.control_input}
    assert kinds == {"START": "CONTROL_SEQUENCE_START", "READY": "CONTROL_SEQUENCE_READY", "END": "CONTROL_SEQUENCE_END"}
    assert all(list(c.control[0].int32_false_true) == [0, 1] for c in config.sequence_batching.control_input)


@pytest.mark.parametrize("graph", ["prefill", "step"])
def test_model_file_has_the_configured_tensors(repo: Path, export_dir: Path, graph: str) -> None:
    """What Triton's onnxruntime backend checks at load: every configured tensor exists in the model
    with the configured type and (batch-prefixed) dims."""
    config = parse_config(repo / f"rwkv_{graph}")
    session = ort.InferenceSession(str(repo / f"rwkv_{graph}" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    onnx_types = {
        "TYPE_FP32": "tensor(float)",
        "TYPE_FP16": "tensor(float16)",
        "TYPE_INT64": "tensor(int64)",
        "TYPE_INT32": "tensor(int32)",
    }
    for state in config.sequence_batching.state:
        for found in (inputs[state.input_name], outputs[state.output_name]):
            assert found.shape[1:] == list(state.dims) and found.type == onnx_types[type_name(state.data_type)]
    for control in config.sequence_batching.control_input:
        assert inputs[control.name].type == "tensor(int32)" and inputs[control.name].shape[1:] == [1]
    assert outputs["logits"].shape[1:] == list(config.output[0].dims)
    assert set(inputs) == {"tokens", *(s.input_name for s in config.sequence_batching.state), "START", "READY", "END"}


def test_initial_state_data_files(repo: Path, export_dir: Path) -> None:
    """pp = -1e38 and a v6 time_state travel as raw row-major files; their values are the manifest's."""
    manifest = manifest_of(export_dir)
    replay = SequenceBatcherReplay(repo / "rwkv_step")
    reference = ExportedModel(export_dir).initial_state(1)
    for spec in manifest["state"]:
        expected = np.moveaxis(reference[spec["name"]], 1, 0)[0]  # one sequence, batch axis removed
        np.testing.assert_array_equal(replay.initial[spec["name"]], expected)
    names = (
        {p.name for p in (repo / "rwkv_step" / "initial_state").glob("*.bin")} if (repo / "rwkv_step" / "initial_state").exists() else set()
    )
    version = manifest["model"]["version"]
    assert names == ({"pp.bin"} if version == "4" else {"wkv.bin"} if any(s.get("initial_file") for s in manifest["state"]) else set())
    if version == "4":
        assert (replay.initial["pp"] == np.float32(-1e38)).all()


# --- replay against run ---------------------------------------------------------------------------


def _greedy(logits: np.ndarray) -> int:
    return int(np.asarray(logits).argmax())


def test_replay_of_interleaved_sequences_equals_run(repo: Path, export_dir: Path) -> None:
    """Three sequences on the prefill model: two prompts share a batch, the third runs alone, then
    every decode execution batches all three in a rotating slot order; each sequence's greedy tokens
    equal `rwkv-export run` on its prompt alone. A correlation id reused after END starts fresh."""
    vocab = manifest_of(export_dir)["model"]["vocab_size"]
    rng = np.random.default_rng(5)
    prompts = {11: rng.integers(0, vocab, 5), 22: rng.integers(0, vocab, 5), 33: rng.integers(0, vocab, 3)}
    n = 6
    replay = SequenceBatcherReplay(repo / "rwkv_prefill")
    first = replay.execute([Request(11, prompts[11], start=True), Request(22, prompts[22], start=True)])
    first += replay.execute([Request(33, prompts[33], start=True)])
    tokens = {cid: [_greedy(out["logits"])] for cid, out in zip((11, 22, 33), first)}
    for i in range(n - 1):
        order = [(11, 22, 33), (33, 11, 22), (22, 33, 11)][i % 3]
        outs = replay.execute([Request(cid, np.array([tokens[cid][-1]]), end=i == n - 2) for cid in order])
        for cid, out in zip(order, outs):
            tokens[cid].append(_greedy(out["logits"]))
    assert replay.sequences == {}  # END dropped every sequence
    for cid, prompt in prompts.items():
        assert tokens[cid] == run_greedy(export_dir, prompt.tolist(), n), f"sequence {cid}"
    again = replay.execute([Request(22, prompts[33], start=True)])  # START resets: C's prompt on B's id
    assert _greedy(again[0]["logits"]) == tokens[33][0]


def test_replay_of_the_step_model_equals_run(repo: Path, export_dir: Path) -> None:
    """The step model fed prompts token by token, two sequences per execution, equals `run`."""
    vocab = manifest_of(export_dir)["model"]["vocab_size"]
    rng = np.random.default_rng(6)
    prompts = {1: rng.integers(0, vocab, 4).tolist(), 2: rng.integers(0, vocab, 4).tolist()}
    replay = SequenceBatcherReplay(repo / "rwkv_step")
    feed = {cid: list(p) for cid, p in prompts.items()}
    generated: dict[int, list[int]] = {1: [], 2: []}
    for i in range(4 + 5):
        order = (1, 2) if i % 2 else (2, 1)
        outs = replay.execute([Request(cid, np.array([feed[cid][i]]), start=i == 0) for cid in order])
        for cid, out in zip(order, outs):
            if i >= 3:
                generated[cid].append(_greedy(out["logits"]))
                feed[cid].append(generated[cid][-1])
    for cid, prompt in prompts.items():
        assert generated[cid] == run_greedy(export_dir, prompt, 6)


def test_unbatched_repository(export_dir: Path, tmp_path: Path) -> None:
    """--max-batch-size 0: dims carry the batch of 1 everywhere; the replay still equals run."""
    out = tmp_path / "repo0"
    assert invoke("triton", export_dir, "-o", out, "--max-batch-size", 0, "-q").exit_code == 0
    config = parse_config(out / "rwkv_prefill")
    manifest = manifest_of(export_dir)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, -1]
    spec = manifest["state"][0]
    assert list(config.sequence_batching.state[0].dims) == [1, *[d for d in spec["shape"] if d != "batch"]]
    prompt = np.random.default_rng(7).integers(0, manifest["model"]["vocab_size"], 4)
    replay = SequenceBatcherReplay(out / "rwkv_prefill")
    tokens = [_greedy(replay.execute([Request(9, prompt, start=True)])[0]["logits"])]
    for _ in range(3):
        tokens.append(_greedy(replay.execute([Request(9, np.array([tokens[-1]]))])[0]["logits"]))
    assert tokens == run_greedy(export_dir, prompt.tolist(), 4)


# --- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v4_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(tmp_path_factory, random_checkpoint(tmp_path_factory, "4"))


def _with_engines(export_dir: Path, tmp_path: Path, plugin: str) -> Path:
    """A copy of the export whose manifest records engines as `build` does (the plans are stand-in
    bytes, recorded with their sha256: these tests stop at the configuration, which never runs a plan)."""
    copy = tmp_path / f"with-{plugin}"
    shutil.copytree(export_dir, copy)
    manifest = manifest_of(copy)
    manifest["engines"] = {}
    for graph in ("prefill", "step"):
        (copy / f"{graph}.plan").write_bytes(b"plan")
        manifest["engines"][graph] = {
            "file": f"{graph}.plan",
            "sha256": hashlib.sha256(b"plan").hexdigest(),
            "target": "tensorrt",
            "tensorrt_version": "10.9",
            "plugin": plugin,
            "ptx_arch": "sm_80" if plugin == "aot" else None,
            "compute_capabilities": ["8.0"],
            "profile": {"tokens": [[1, 1], [1, 8], [4, 64]]},
            "plugin_layers": 2,
        }
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_existing_target_needs_force(v4_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("triton", v4_export, "-o", out)
    assert result.exit_code == 2 and "already exists; pass --force" in result.output and (out / "keep.txt").exists()
    assert invoke("triton", v4_export, "-o", out, "--force", "-q").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "rwkv_step" / "config.pbtxt").is_file()
    readme = (out / "README.md").read_text()  # the request flow, for this export
    assert "RWKV-4 2x32 vocab 61 float32" in readme and "max_batch_size 8" in readme
    assert "`rwkv_prefill`: request 1 (`sequence_start=True`)" in readme and "`rwkv_step`: one token per request" in readme


def test_what_triton_cannot_express_is_refused(v4_export: Path, tmp_path: Path) -> None:
    result = invoke("triton", v4_export, "-o", tmp_path / "a", "--backend", "tensorrt")
    assert result.exit_code == 2 and "no TensorRT engine for prefill, step" in result.output
    result = invoke(
        "triton", _with_engines(v4_export, tmp_path, "python"), "-o", tmp_path / "b", "--backend", "tensorrt", "--max-batch-size", 0
    )
    assert result.exit_code == 2 and "Python plugin front" in result.output and result.output.count("\n") == 1
    aot = _with_engines(v4_export, tmp_path, "aot")
    result = invoke("triton", aot, "-o", tmp_path / "c", "--backend", "tensorrt")
    assert result.exit_code == 2 and "batch on axis 1" in result.output and "--max-batch-size 0" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_tensorrt_repository_without_batching(v4_export: Path, tmp_path: Path) -> None:
    """Engines keep [n_layer, batch, ...]: the config says so with batch 1 and has no control inputs
    (an engine has no START/READY/END inputs; Triton's initial_state does the reset)."""
    aot = _with_engines(v4_export, tmp_path, "aot")
    out = tmp_path / "trt"
    assert invoke("triton", aot, "-o", out, "--backend", "tensorrt", "--max-batch-size", 0, "-q").exit_code == 0
    config = parse_config(out / "rwkv_step")
    assert config.backend == "tensorrt" and config.max_batch_size == 0 and not config.sequence_batching.control_input
    manifest = manifest_of(aot)
    for state, spec in zip(config.sequence_batching.state, manifest["state"]):
        assert list(state.dims) == [1 if d == "batch" else d for d in spec["shape"]]
    assert (out / "rwkv_step" / "1" / "model.plan").read_bytes() == b"plan"
    pp = np.fromfile(out / "rwkv_step" / "initial_state" / "pp.bin", np.float32)
    assert pp.size == manifest["model"]["n_layer"] * manifest["model"]["n_embd"] and (pp == np.float32(-1e38)).all()


def test_a_changed_plan_is_refused(v4_export: Path, tmp_path: Path) -> None:
    """The plan copied into the repository is the one `build` recorded (its sha256, as the runtime checks)."""
    aot = _with_engines(v4_export, tmp_path, "aot")
    (aot / "step.plan").write_bytes(b"another plan")
    result = invoke("triton", aot, "-o", tmp_path / "trt", "--backend", "tensorrt", "--max-batch-size", 0)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "engines.step.sha256: step.plan does not match its sha256" in result.output and not (tmp_path / "trt").exists()


def test_external_data_travels_with_the_model(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """An export with external data (large models) gives model.onnx + model.onnx.data per model, and
    an --all-logits prefill serves logits [-1, V]; the replay still equals run."""
    from rwkv_export.export import export_checkpoint

    ckpt = random_checkpoint(tmp_path_factory, "4")
    directory = export_checkpoint(ckpt, tmp_path / "ext", all_logits=True, external_data_threshold=0).directory
    out = tmp_path / "repo"
    assert invoke("triton", directory, "-o", out, "-q").exit_code == 0
    for graph in ("prefill", "step"):
        assert sorted(p.name for p in (out / f"rwkv_{graph}" / "1").iterdir()) == ["model.onnx", "model.onnx.data"]
    config = parse_config(out / "rwkv_prefill")
    assert list(config.output[0].dims) == [-1, 61]
    prompt = np.random.default_rng(8).integers(0, 61, 5)
    replay = SequenceBatcherReplay(out / "rwkv_prefill")
    tokens = [_greedy(replay.execute([Request(3, prompt, start=True)])[0]["logits"][-1])]
    for _ in range(2):
        tokens.append(_greedy(replay.execute([Request(3, np.array([tokens[-1]]))])[0]["logits"][-1]))
    assert tokens == run_greedy(directory, prompt.tolist(), 3)
