"""The typed manifest: exact round trip, one line per bad field, files inside the directory with their
sha256 (and the size + mtime fast path), state sizes refused before allocation, and a runtime that
loads without the exporter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rwkv_export.errors import RwkvExportError
from rwkv_export.manifest import Manifest
from tests.conftest import make_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rwkv_export.export import export_checkpoint

    root = tmp_path_factory.mktemp("manifest")
    return export_checkpoint(make_checkpoint(root / "m.pth", layers=2, embd=32, vocab=256, seed=4), root / "out").directory


@pytest.fixture
def copy(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RWKV_EXPORT_CACHE", str(tmp_path / "cache"))
    return Path(shutil.copytree(exported, tmp_path / "out"))


def _edit(directory: Path, change: Any) -> None:
    doc = json.loads((directory / "manifest.json").read_text())
    change(doc)
    (directory / "manifest.json").write_text(json.dumps(doc))


def _refused(directory: Path, fragment: str) -> str:
    with pytest.raises(RwkvExportError) as info:
        Manifest.read(directory)
    message = str(info.value)
    assert "\n" not in message and fragment in message, message
    return message


def test_round_trip_is_byte_exact(copy: Path, tmp_path: Path) -> None:
    manifest = Manifest.read(copy)
    original = (copy / "manifest.json").read_bytes()
    assert json.dumps(manifest.to_dict()) == json.dumps(json.loads(original))  # same keys, same order
    manifest.write(tmp_path)
    assert (tmp_path / "manifest.json").read_bytes() == original
    assert manifest.graphs["prefill"].inputs[0].shape == ("batch", "seq") and manifest.export.op == "WKV4"
    assert [s.name for s in manifest.state] == ["x_att", "aa", "bb", "pp", "x_ffn"] and manifest.model.vocab_size == 256
    assert len(manifest.fingerprint) == 64 and manifest.fingerprint == Manifest.read(copy).fingerprint


def test_state_specs_know_their_batch_axis(copy: Path) -> None:
    """What serving cuts, joins and sizes state by: the one "batch" dim's axis and a concrete shape."""
    pp = Manifest.read(copy).state[3]
    assert pp.name == "pp" and pp.shape == (2, "batch", 32)
    assert pp.batch_axis == 1 and pp.concrete_shape(5) == (2, 5, 32) and pp.concrete_shape(1) == (2, 1, 32)


def test_older_exports_load(copy: Path) -> None:
    """Before RWKV-5 an export had no wkv_op and no function fingerprint: still read, as WKV4."""
    _edit(copy, lambda d: [d["export"].pop(k) for k in ("wkv_op", "wkv_function_sha256")])
    manifest = Manifest.read(copy)
    assert manifest.export.op == "WKV4" and manifest.export.wkv_function_sha256 is None


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d["graphs"]["prefill"]["inputs"][2].update(shape="2,batch,32"),
            "graphs.prefill.inputs[2].shape: expected a list of ints or dim names",
        ),
        (lambda d: d["model"].pop("n_layer"), "model.n_layer: missing"),
        (lambda d: d["export"].update(colour="blue"), "export.colour: unknown field"),
        (lambda d: d["state"][1].update(initial="0"), "state[1].initial: expected a number, got a string"),
        (lambda d: d["graphs"]["step"].update(file=None), "graphs.step.file: expected a file name inside the export directory, got null"),
        (lambda d: d["graphs"]["step"].update(file="../other/step.onnx"), "graphs.step.file: file name '../other/step.onnx' is outside"),
        (lambda d: d["graphs"]["step"].update(file="/abs/step.onnx"), "graphs.step.file: file name '/abs/step.onnx' is outside"),
        (lambda d: d["graphs"].update(step={**d["graphs"]["step"], "inputs": []}), "graphs.step.inputs: expected 1..256 entries, got 0"),
        (
            lambda d: d["graphs"]["prefill"]["outputs"][0].update(shape=["batch", 255]),
            "graphs.prefill.outputs[0].shape: logits end in the vocab size 256",
        ),
        (lambda d: d["state"][0].update(output="aa_out"), "graphs.prefill.outputs: no state output 'aa_out' of shape"),
    ],
    ids=["shape", "missing", "unknown", "type", "null-file", "escape", "absolute", "no-inputs", "vocab", "state-map"],
)
def test_one_line_names_the_field(copy: Path, change: Any, message: str) -> None:
    _edit(copy, change)
    _refused(copy, f"{copy / 'manifest.json'}: {message}")


def test_state_too_large_is_refused_before_allocation(copy: Path) -> None:
    def huge(d: dict[str, Any]) -> None:
        for spec in (d["state"][0], d["graphs"]["prefill"]["inputs"][1], d["graphs"]["step"]["inputs"][1]):
            spec["shape"] = [1 << 12, "batch", 1 << 20]

    _edit(copy, huge)
    _refused(copy, "state[0].shape: 4294967296 elements per batch row is more than 1073741824")


def test_links_out_of_the_directory_are_refused(copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(copy / "step.onnx", outside)
    (copy / "step.onnx").symlink_to(outside)
    _refused(copy, "graphs.step.sha256.step.onnx: 'step.onnx' resolves outside the export directory")


def test_sha256_checked_with_a_size_and_mtime_fast_path(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Manifest.read(copy)  # the first read hashes every file and remembers (size, mtime)
    path = copy / "step.onnx"
    stamp = path.stat()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    Manifest.read(copy)  # documented trust: same size and mtime, not hashed again
    monkeypatch.setenv("RWKV_EXPORT_HASH_CACHE", "0")
    _refused(copy, "graphs.step.sha256.step.onnx: step.onnx does not match its sha256")
    monkeypatch.delenv("RWKV_EXPORT_HASH_CACHE")
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))
    _refused(copy, "step.onnx does not match its sha256")


@pytest.mark.parametrize(
    "text, message",
    [
        (b"\xff\xfe{}", "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"format": "rwkv-export/1", "x": NaN}', "NaN is not a JSON number"),
        (b'{"format": "rwkv-export/1"', "not valid JSON"),
        (b"[1, 2]", "manifest format 'None' is not supported"),
    ],
)
def test_unreadable_json_is_one_line(copy: Path, text: bytes, message: str) -> None:
    (copy / "manifest.json").write_bytes(text)
    _refused(copy, message)


def _imported(module: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, check=True)
    return {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("module", ["rwkv_export.runtime", "rwkv_export.manifest", "rwkv_export.tokenizer", "rwkv_export.generate"])
def test_runtime_side_loads_no_exporter(module: str) -> None:
    """Reading an export needs numpy only: no torch, no torch.onnx, no onnx/onnxscript, no rwkv_export.export."""
    loaded = _imported(module)
    heavy = sorted(
        m for m in loaded if m.split(".")[0] in ("torch", "onnx", "onnxscript", "onnxruntime") or m.startswith("rwkv_export.export")
    )
    assert not heavy, heavy
    assert module in loaded


def test_initial_files_feed_every_runtime_path(copy: Path) -> None:
    """A state with an initial file (as a v6 time_state is shipped): the manifest broadcasts it over the
    batch, and the TensorRT runner's device state starts from the same values (no constant-only path)."""
    import numpy as np

    from rwkv_export.fileio import sha256_file
    from rwkv_export.runtime.tensorrt_runner import DeviceState

    value = np.random.default_rng(0).normal(size=(2, 1, 32)).astype(np.float32)
    np.save(copy / "initial_aa.npy", value)

    def with_file(d: dict[str, Any]) -> None:
        for spec in (d["state"][1], d["graphs"]["prefill"]["inputs"][2], d["graphs"]["step"]["inputs"][2]):
            spec["initial_file"] = "initial_aa.npy"
        d["state"][1]["initial_sha256"] = sha256_file(copy / "initial_aa.npy")

    _edit(copy, with_file)
    manifest = Manifest.read(copy)
    state = manifest.initial_state(3)
    assert state["aa"].shape == (2, 3, 32) and all(np.array_equal(state["aa"][:, b], value[:, 0]) for b in range(3))
    assert state["pp"].max() == np.float32(-1e38)
    device = DeviceState.initial_for(manifest, batch=3)
    assert device.shapes["aa"] == (2, 3, 32) and np.array_equal(device.initial["aa"], state["aa"])
    np.save(copy / "initial_aa.npy", value[:, :, :31])
    _edit(copy, lambda d: d["state"][1].update(initial_sha256=sha256_file(copy / "initial_aa.npy")))
    _refused(copy, "state[1].initial_file: initial_aa.npy holds float32 [2, 1, 31], expected float [2, 1, 32]")
