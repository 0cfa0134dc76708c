"""The streamed export (issue 13): weights written tensor by tensor from a lazily read checkpoint,
one weight file for both graphs, pieces traced once and stamped per block.

Oracles: the reference model's buffers (what the whole-model trace used to bake in), the float64
reference's logits, and ONNX Runtime on the files as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from safetensors.torch import save_file

from rwkv_export.checkpoint import Checkpoint, load_checkpoint, open_checkpoint, save_checkpoint
from rwkv_export.checkpoint.lazy import SHARD_INDEX, TensorStore
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.cli import cli
from rwkv_export.export import export_checkpoint
from rwkv_export.export.weights import ALIGN, PAGE_ALIGN, PAGE_ALIGN_FROM, WEIGHTS_FILE
from rwkv_export.model import build_model, initial_state
from rwkv_export.runtime import ExportedModel

VERSIONS = ("4", "5.1", "5.2", "6", "7")


def _save(tmp_path: Path, version: str, suffix: str = ".safetensors", **sizes: int) -> Path:
    config, weights = random_weights(version, sizes.get("layers", 3), sizes.get("embd", 32), sizes.get("vocab", 61), seed=5)
    path = tmp_path / f"v{version}{suffix}"
    save_checkpoint(Checkpoint(config, weights, "random", path), path)
    return path


def _initializers(directory: Path, graph: str) -> dict[str, np.ndarray]:
    model = onnx.load(directory / f"{graph}.onnx", load_external_data=True)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_weight_is_the_reference_models_buffer(tmp_path: Path, version: str, dtype: str) -> None:
    """Each initializer named after a checkpoint key holds, bit for bit, the buffer the reference model
    builds from it (a `.transpose` one: its transpose), in both graphs: the weights the whole-model
    trace baked in (float16: with the rescale applied per block)."""
    path = _save(tmp_path, version)
    out = export_checkpoint(path, tmp_path / "out", dtype=dtype).directory
    ckpt = load_checkpoint(path)
    model = build_model(ckpt, dtype)
    buffers = {k: v.numpy() for k, v in model.named_buffers()}
    checked = folded = 0
    for graph in ("prefill", "step"):
        for name, value in _initializers(out, graph).items():
            key = next((k for k in ckpt.weights if name == k or name.startswith(k + ".")), None)
            if key is None:
                continue  # a small constant of the graph (shapes, axes)
            ops = name[len(key) + 1 :]
            block = key.split(".", 2)
            buffer = (
                buffers[key.replace(".", "_")]
                if block[0] != "blocks" or key.startswith("blocks.0.ln0")
                else buffers[f"blocks.{block[1]}.{block[2].replace('.', '_')}"]
            )
            if ops not in ("", "transpose"):
                folded += 1  # another fold (1 - mix, a cast, a reshape): its graph's logits are checked elsewhere
                continue
            expected = buffer.T if ops == "transpose" else buffer
            assert value.dtype == expected.dtype and np.array_equal(value, expected), name
            checked += 1
    assert checked >= 2 * 10 * 3, (checked, folded)


def test_shared_file_and_inline_hold_the_same_bytes(tmp_path: Path) -> None:
    """threshold 0: one weights.data for both graphs, tensors >= 1 MiB on 64 KiB boundaries, the rest
    on 64 bytes; every initializer equals the self-contained export's; ORT runs it to the same logits."""
    path = _save(tmp_path, "7", layers=2, embd=64, vocab=4096)  # emb / head: 4096 x 64 x 4 = 1 MiB
    inline = export_checkpoint(path, tmp_path / "inline").directory
    shared = export_checkpoint(path, tmp_path / "shared", external_data_threshold=0).directory
    assert not (inline / WEIGHTS_FILE).exists()
    step = onnx.load(shared / "step.onnx", load_external_data=False)
    offsets = {}
    for t in step.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            assert info["location"] == WEIGHTS_FILE
            offsets[t.name] = (int(info["offset"]), int(info["length"]))
    assert offsets and all(o % (PAGE_ALIGN if n >= PAGE_ALIGN_FROM else ALIGN) == 0 for o, n in offsets.values())
    assert any(n >= PAGE_ALIGN_FROM for _, n in offsets.values())
    assert max(o + n for o, n in offsets.values()) == (shared / WEIGHTS_FILE).stat().st_size
    for graph in ("prefill", "step"):
        a, b = _initializers(inline, graph), _initializers(shared, graph)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), graph
    tokens = np.array([[5, 9, 4000]])
    with ExportedModel(inline) as x, ExportedModel(shared) as y:
        lx, _ = x.prefill(tokens, x.initial_state(1))
        ly, _ = y.prefill(tokens, y.initial_state(1))
    # the same weights; the shared sessions skip prepacking, so ORT's GEMM rounds a little differently
    assert np.abs(lx - ly).max() <= 1e-6 * np.abs(lx).max()
    manifest = json.loads((shared / "manifest.json").read_text())
    digests = {g["sha256"][WEIGHTS_FILE] for g in manifest["graphs"].values()}
    assert len(digests) == 1 and manifest["graphs"]["prefill"]["external_data"] == [WEIGHTS_FILE]


def test_pth_and_sharded_safetensors_export_alike(tmp_path: Path) -> None:
    """A .pth (read through torch's file map) and the same tensors as two safetensors shards with a
    transformers index give the same graphs' weights and logits that match the float64 reference."""
    pth = _save(tmp_path, "6", ".pth")
    weights = load_checkpoint(pth).weights
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for file, part in shards.items():
        save_file({k: weights[k].contiguous() for k in part}, str(sharded / file))
    index = {"metadata": {}, "weight_map": {k: f for f, part in shards.items() for k in part}}
    (sharded / SHARD_INDEX).write_text(json.dumps(index))
    assert isinstance(open_checkpoint(sharded).weights, TensorStore)
    a = export_checkpoint(pth, tmp_path / "a").directory
    b = export_checkpoint(sharded, tmp_path / "b").directory
    x, y = _initializers(a, "step"), _initializers(b, "step")
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    model = build_model(load_checkpoint(sharded / SHARD_INDEX), "float64")
    tokens = np.array([[3, 1, 4, 1, 5]])
    ref, _ = model.forward_sequence(torch.from_numpy(tokens), model.initial_state(1))
    with ExportedModel(b) as exported:
        logits, _ = exported.prefill(tokens, exported.initial_state(1))
    assert np.abs(logits - ref.numpy()).max() / np.abs(ref.numpy()).max() < 1e-5


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def test_bad_checkpoints_fail_in_one_line_and_leave_no_output(tmp_path: Path) -> None:
    """A safetensors header that claims more bytes than the file has, a shard missing from its index,
    a .pth cut short: exit 2, one line naming the problem, no output directory."""
    path = _save(tmp_path, "7")
    short = tmp_path / "short.safetensors"
    short.write_bytes(path.read_bytes()[:-100])
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / SHARD_INDEX).write_text(json.dumps({"weight_map": {"emb.weight": "model-00001-of-00002.safetensors"}}))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(_save(tmp_path, "7", ".pth").read_bytes()[:-5000])
    cases = {
        short: "but the file has",
        sharded: "shard 'model-00001-of-00002.safetensors' named by the index is missing",
        cut: "not a readable PyTorch checkpoint",
    }
    for source, message in cases.items():
        out = tmp_path / f"out-{source.name}"
        code, output = _cli("export", source, "-o", out, "-q")
        assert code == 2 and output.count("\n") == 1 and message in output and not out.exists(), (source, output)


def test_nan_in_a_streamed_tensor_is_refused_mid_export(tmp_path: Path) -> None:
    """A NaN is found when its tensor is read (not before): exit 2 naming the tensor, no output left."""
    config, weights = random_weights("7", 3, 32, 61, seed=2)
    weights["blocks.2.ffn.value.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(Checkpoint(config, weights, "random", path), path)
    code, output = _cli("info", path)
    assert code == 0 and "rwkv_version" in output  # headers only
    code, output = _cli("info", path, "--scan")
    assert code == 2 and "'blocks.2.ffn.value.weight' holds 1 NaN/Inf" in output
    code, output = _cli("export", path, "-o", tmp_path / "out", "-q")
    assert code == 2 and "'blocks.2.ffn.value.weight' holds 1 NaN/Inf" in output and not (tmp_path / "out").exists()


_FULL_DISK = """
import resource, signal, sys
from rwkv_export.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = ["rwkv-export", *sys.argv[2:]]
main()
"""


def test_a_full_disk_mid_write_is_one_line_and_leaves_the_old_export(tmp_path: Path) -> None:
    """weights.data cannot grow past 200 kB (RLIMIT_FSIZE, as a full disk): exit 2, one line, and the
    export already at the output path is left as it was."""
    path = _save(tmp_path, "7", layers=2, embd=64, vocab=4096)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cmd = [sys.executable, "-c", _FULL_DISK, "200000", "export", str(path), "-o", str(out), "--force", "-q", "--weights", "shared"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "cannot write" in proc.stderr and "File too large" in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_make_checkpoint_streams_the_same_tensors(tmp_path: Path) -> None:
    """make-checkpoint's streamed .safetensors holds exactly random_checkpoint's tensors (bfloat16)."""
    from rwkv_export.checkpoint.make import random_checkpoint

    out = tmp_path / "r.safetensors"
    code, output = _cli(
        "make-checkpoint", "--version", "7", "--layers", "2", "--embd", "64", "--vocab", "300", "--dtype", "bfloat16", "-o", out
    )
    assert code == 0, output
    _, expected = random_checkpoint("7", 2, 64, 300, dtype=torch.bfloat16)
    got = open_checkpoint(out).weights
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    converted = tmp_path / "c.safetensors"
    assert _cli("convert", out, "-o", converted)[0] == 0
    again = open_checkpoint(converted).weights
    assert all(torch.equal(again[k], expected[k]) for k in expected)


def test_state_contract_unchanged(tmp_path: Path) -> None:
    """The stamped graph's state outputs are the stacked per-block states: equal to the float64
    reference's for every state tensor after a prompt (RWKV-4, channel state with pp)."""
    path = _save(tmp_path, "4")
    out = export_checkpoint(path, tmp_path / "out").directory
    ckpt = load_checkpoint(path)
    model = build_model(ckpt, "float64")
    tokens = np.array([[7, 8, 9], [1, 2, 3]])
    ref_logits, ref_state = model.forward_sequence(torch.from_numpy(tokens), initial_state(ckpt.config, 2, torch.float64))
    with ExportedModel(out) as exported:
        logits, state = exported.prefill(tokens, exported.initial_state(2))
    for name, value in ref_state._asdict().items():
        ref = value.numpy()
        assert np.abs(state[name] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), name
    assert np.abs(logits - ref_logits.numpy()).max() / np.abs(ref_logits.numpy()).max() < 1e-5


_PEAK = """
import sys
from rwkv_export.cli import cli
try:
    cli(sys.argv[1:], prog_name="rwkv-export")
except SystemExit as exc:
    if exc.code:
        raise
print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1], file=sys.stderr)
"""


def _export_peak(checkpoint: Path, out: Path, *how: str) -> int:
    """Peak RSS (bytes) of one `export` process (`how`: its dtype options), from its own VmHWM."""
    how = how or ("--dtype", "float16")
    cmd = [sys.executable, "-c", _PEAK, "export", str(checkpoint), "-o", str(out), *how, "-q", "--weights", "shared"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stderr.strip().splitlines()[-1]) * 1024


def test_export_memory_does_not_grow_with_the_weights(tmp_path: Path) -> None:
    """An 8 x 1024 RWKV-7 (0.1B parameters in its blocks, bfloat16 safetensors made streamed): its
    export's peak RSS exceeds a 2-layer 64-wide model's by less than half its weight bytes
    (the whole-model export held ~7x them: issue 13); one tensor at a time costs a few of its largest
    (a 4096 x 1024 FFN matrix). Straight to int4 (--quantize, slab by slab) within the same bound."""
    big = tmp_path / "big.safetensors"
    code, output = _cli(
        "make-checkpoint", "--version", "7", "--layers", "8", "--embd", "1024", "--vocab", "4096", "--dtype", "bfloat16", "-o", big
    )
    assert code == 0, output
    small = _save(tmp_path, "7", layers=2, embd=64, vocab=256)
    base = _export_peak(small, tmp_path / "small")
    peak = _export_peak(big, tmp_path / "big")
    weights = (tmp_path / "big" / WEIGHTS_FILE).stat().st_size
    assert weights > 250e6
    assert peak - base < weights / 2, (
        f"export peak {peak / 1e9:.2f} GB vs {base / 1e9:.2f} GB for a tiny model; weights {weights / 1e9:.2f} GB"
    )
    int4 = _export_peak(big, tmp_path / "int4", "--dtype", "float32", "--quantize", "int4")
    assert (tmp_path / "int4" / WEIGHTS_FILE).stat().st_size < 0.3 * weights
    assert int4 - base < weights / 2, f"int4 export peak {int4 / 1e9:.2f} GB vs {base / 1e9:.2f} GB; float16 weights {weights / 1e9:.2f} GB"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_block_by_block_conversion_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """Large matrices are converted a block of rows (or, transposed, of columns) at a time; forced
    here on every matrix with 4 kB blocks: the same bytes as whole-tensor conversion (float16 RWKV-5.2:
    the rescale divides att.output / ffn.value per block)."""
    from rwkv_export.export import weights

    path = _save(tmp_path, "5.2", suffix, layers=7, embd=64, vocab=300)
    whole = export_checkpoint(path, tmp_path / "whole", dtype="float16").directory
    monkeypatch.setattr(weights, "BLOCKED_FROM", 0)
    monkeypatch.setattr(weights, "CHUNK_BYTES", 4096)
    blocked = export_checkpoint(path, tmp_path / "blocked", dtype="float16", external_data_threshold=0).directory
    for graph in ("prefill", "step"):
        a, b = _initializers(whole, graph), _initializers(blocked, graph)
        assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a), graph
