"""Malformed checkpoints of every format end in one clean line, never a traceback, hang or runaway allocation.

The seeded fuzz run (tests/checkpoint/_checkpoint_mutations.py) loads a few hundred mutations per format in a
watchdog process (timeout, RLIMIT_AS) and a CLI sample through `rwkv-export info`; the targeted
cases below pin each hole issue 16 found. scripts/fuzz_checkpoints.py is the bigger run.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from rwkv_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.errors import RwkvExportError
from tests.checkpoint import _checkpoint_mutations as mut
from tests.conftest import TINY

CASES_PER_FORMAT = 200
CASE_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[mut.Base]]:
    return mut.make_bases(tmp_path_factory.mktemp("fuzz-bases"), TINY if TINY.is_dir() else None)


def test_fuzz_load_checkpoint(bases: dict[str, list[mut.Base]], tmp_path: Path) -> None:
    results = mut.run_cases(tmp_path, bases, CASES_PER_FORMAT, seed=16, timeout=CASE_TIMEOUT_S)
    bad = [
        (fmt, r["kind"], r["outcome"], r["detail"])
        for fmt, rows in results.items()
        for r in rows
        if r["outcome"] not in ("clean", "accepted")
    ]
    counts = {fmt: dict(collections.Counter(r["outcome"] for r in rows)) for fmt, rows in results.items()}
    assert not bad, f"{len(bad)} cases were not a clean error or a finite model: {bad[:8]} (counts {counts})"
    for fmt, rows in results.items():  # the mutations reach the loaders' error paths, not only harmless bytes
        kinds_refused = {r["kind"] for r in rows if r["outcome"] == "clean"}
        assert len(rows) == CASES_PER_FORMAT and len(kinds_refused) >= 8, (fmt, counts[fmt], kinds_refused)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (mut.MEMORY_LIMIT, mut.MEMORY_LIMIT))


CLI_KINDS = {"pth": "zip_bomb", "safetensors": "st_header_len", "hf": "config_deep", "rwkvcpp": "rec_dims", "rwkvcpp-fp16": "header"}


def _cli_case(base: mut.Base, kind: str, out: Path) -> Path:
    import random

    rng = random.Random(3)
    if base.fmt == "hf":
        mut._hf_case(base, rng, kind, out)
    elif base.fmt == "pth":
        mut._pth_mutation(base, rng, kind, out)
    elif base.fmt == "safetensors":
        out.write_bytes(mut._safetensors_mutation(base.path.read_bytes(), rng, kind))
    else:
        out.write_bytes(mut._rwkvcpp_mutation(base.path, random.Random(7), kind))
    return out


def _check_cli(paths: list[tuple[Path, int]]) -> None:
    """`rwkv-export info` on each path at once: exit 2 with one stderr line, or exit 0 for a valid one."""
    exe = [sys.executable, "-c", "from rwkv_export.cli import main; main()"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        (
            p,
            want,
            subprocess.Popen(
                [*exe, "info", str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_limited
            ),
        )
        for p, want in paths
    ]
    for path, want, proc in procs:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
        assert proc.returncode == want, (path.name, proc.returncode, err)
        if want == 2:
            assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, (path.name, err)
        else:
            assert "rwkv_version" in out and err == "", (path.name, err)


def test_fuzz_cli_sample(bases: dict[str, list[mut.Base]], tmp_path: Path) -> None:
    """A valid checkpoint loads (exit 0); a refused HF directory and rwkv.cpp file: exit 2, one line."""
    paths = [(bases["pth"][0].path, 0)]
    for fmt in ("hf", "rwkvcpp"):
        paths.append((_cli_case(bases[fmt][0], CLI_KINDS[fmt], tmp_path / f"cli-{fmt}{mut._SUFFIX[fmt]}"), 2))
    _check_cli(paths)


@pytest.mark.slow
def test_fuzz_cli_sample_every_format(bases: dict[str, list[mut.Base]], tmp_path: Path) -> None:
    paths = [(_cli_case(bases[fmt][-1], kind, tmp_path / f"cli-{fmt}{mut._SUFFIX[fmt]}"), 2) for fmt, kind in CLI_KINDS.items()]
    _check_cli(paths)


# --- the holes issue 16 found, one by one ----------------------------------------------------------


@pytest.fixture
def v4(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    config, weights = random_weights("4", 2, 32, 50)
    path = tmp_path / "v4.pth"
    save_checkpoint(Checkpoint(config, weights, "random", path), path)
    return weights, path


def _refused(path: Path, match: str) -> None:
    with pytest.raises(RwkvExportError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["blocks.1000000000.att.key.weight", "blocks.999999999999.ln1.weight"])
def test_block_index_is_bounded_by_the_blocks_held(v4: tuple[dict[str, torch.Tensor], Path], tmp_path: Path, key: str) -> None:
    weights = {**v4[0], key: torch.zeros(32)}
    torch.save(weights, tmp_path / "far.pth")
    _refused(tmp_path / "far.pth", r"names block 1000000000 but the checkpoint holds 3 blocks|does not name a block")


@pytest.mark.parametrize("key", [7, (1, 2), None])
def test_non_string_keys(v4: tuple[dict[str, torch.Tensor], Path], tmp_path: Path, key: object) -> None:
    torch.save({**v4[0], key: torch.zeros(2)}, tmp_path / "k.pth")
    _refused(tmp_path / "k.pth", r"is a (int|tuple|NoneType), expected a string tensor name")


@pytest.mark.parametrize("key,tensor,match", [
    ("emb.weight", torch.zeros(()), r"'emb.weight' has shape \[\]: every tensor needs one or more dimensions, each >= 1"),
    ("emb.weight", torch.zeros(50, 32, 1), r"'emb.weight' has shape \[50, 32, 1\], expected 2"),
    ("blocks.0.ffn.key.weight", torch.zeros(128), r"'blocks.0.ffn.key.weight' has shape \[128\], expected 2"),
    ("emb.weight", torch.zeros(0, 32), r"'emb.weight' has shape \[0, 32\]: every tensor needs"),
    ("blocks.1.ln1.weight", torch.zeros(0), r"'blocks.1.ln1.weight' has shape \[0\]: every tensor needs"),
])  # fmt: skip
def test_ranks_checked_before_use(
    v4: tuple[dict[str, torch.Tensor], Path], tmp_path: Path, key: str, tensor: torch.Tensor, match: str
) -> None:
    torch.save({**v4[0], key: tensor}, tmp_path / "r.pth")
    _refused(tmp_path / "r.pth", match)


def test_decay_with_zero_heads(tmp_path: Path) -> None:
    weights = random_weights("5.2", 2, 32, 50)[1]
    weights["blocks.0.att.time_decay"] = torch.zeros(0, 8)
    torch.save(weights, tmp_path / "h.pth")
    _refused(tmp_path / "h.pth", r"'blocks.0.att.time_decay' has shape \[0, 8\]: every tensor needs one or more dimensions")


def test_nonfinite_weights_named_and_allowed_by_option(v4: tuple[dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    weights = dict(v4[0])
    weights["blocks.1.att.value.weight"] = weights["blocks.1.att.value.weight"].clone()
    weights["blocks.1.att.value.weight"][3, 4] = float("nan")
    weights["blocks.1.att.value.weight"][0, 0] = float("inf")
    torch.save(weights, tmp_path / "nan.pth")
    _refused(tmp_path / "nan.pth", r"'blocks.1.att.value.weight' holds 2 NaN/Inf value\(s\) of 1024; pass --allow-nonfinite")
    loaded = load_checkpoint(tmp_path / "nan.pth", allow_nonfinite=True)
    assert torch.isnan(loaded.weights["blocks.1.att.value.weight"][3, 4]) and loaded.config.n_layer == 2


def test_zip_bomb_refused_before_inflating(v4: tuple[dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(v4[1]) as src, zipfile.ZipFile(bomb, "w") as dst:
        for name in src.namelist():
            data = bytes(256 << 20) if name.endswith("/data/0") else src.read(name)
            dst.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 2 << 20
    _refused(bomb, r"zip records declare 268,\d{3},\d{3} bytes once inflated, more than a [\d,]+-byte checkpoint can hold")


def test_legacy_pickle_refused(v4: tuple[dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    torch.save(v4[0], tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    _refused(tmp_path / "old.pth", r"not a readable PyTorch checkpoint \(not a zip archive")


def test_safetensors_header_longer_than_file(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b'{"a": 1}')
    _refused(path, r"header length 1000000000000 does not fit its 16 bytes")


@pytest.fixture
def hf_dir(v4: tuple[dict[str, torch.Tensor], Path], tmp_path: Path) -> Path:
    save_checkpoint(load_checkpoint(v4[1]), tmp_path / "hf", "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize("text,match", [
    (b"\xff\xfe{}", r"not UTF-8 text \(byte 0\)"),
    (b"[" * 100_000 + b"]" * 100_000, r"nested 100000 levels deep \(limit 64\)"),
    (b"42", r"expected a JSON object at the top, found int"),
    (b"1" * 5000, r"not valid JSON"),
])  # fmt: skip
def test_hf_config_parsed_with_limits(hf_dir: Path, text: bytes, match: str) -> None:
    (hf_dir / "config.json").write_bytes(text)
    _refused(hf_dir, match)


@pytest.mark.parametrize("field,value,match", [
    ("hidden_size", 33, r"'hidden_size' is 33 but the weights have n_embd 32"),
    ("num_hidden_layers", 10**9, r"'num_hidden_layers' is 1000000000 but the weights have n_layer 2"),
    ("vocab_size", "50", r"'vocab_size' is '50', expected a non-negative integer"),
    ("intermediate_size", True, r"'intermediate_size' is 'True', expected a non-negative integer"),
])  # fmt: skip
def test_hf_config_cross_checked_against_weights(hf_dir: Path, field: str, value: object, match: str) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, field: value}))
    _refused(hf_dir, match)


def test_fifo_in_hf_dir_does_not_block(hf_dir: Path) -> None:
    import signal

    os.mkfifo(hf_dir / "model-00002-of-00002.safetensors")
    signal.alarm(30)  # a blocking open() would end the test with SIGALRM instead of hanging the suite
    try:
        _refused(hf_dir, r"model-00002-of-00002.safetensors: the checkpoint is not a regular file")
    finally:
        signal.alarm(0)


def _rwkvcpp(tmp_path: Path, dims: tuple[int, ...], data: bytes, header: tuple[int, ...] = (50, 32, 2)) -> Path:
    path = tmp_path / "c.bin"
    key = b"emb.weight"
    path.write_bytes(
        struct.pack("<6i", 0x67676D66, 101, *header, 0) + struct.pack(f"<3i{len(dims)}i", len(dims), len(key), 0, *dims) + key + data
    )
    return path


@pytest.mark.parametrize("dims,data,match", [
    ((-1, 50), bytes(64), r"'emb.weight' has dims \[-1, 50\] .*each must be >= 1"),
    ((32, 50), bytes(64), r"truncated rwkv.cpp file \('emb.weight' needs 6400 bytes"),
    ((2**31 - 1, 2**31 - 1), bytes(64), r"truncated rwkv.cpp file \('emb.weight' needs \d+ bytes"),
])  # fmt: skip
def test_rwkvcpp_sizes_checked_against_the_file(tmp_path: Path, dims: tuple[int, ...], data: bytes, match: str) -> None:
    _refused(_rwkvcpp(tmp_path, dims, data), match)


def test_rwkvcpp_header_cross_checked(v4: tuple[dict[str, torch.Tensor], Path], tmp_path: Path) -> None:
    save_checkpoint(load_checkpoint(v4[1]), tmp_path / "ok.bin")
    data = bytearray((tmp_path / "ok.bin").read_bytes())
    data[16:20] = struct.pack("<i", 7)  # n_layer
    (tmp_path / "bad.bin").write_bytes(bytes(data))
    _refused(tmp_path / "bad.bin", r"rwkv.cpp header says n_layer 7 but the tensors have 2")


def test_rwkvcpp_v5_time_first_must_be_positive(tmp_path: Path) -> None:
    config, weights = random_weights("5.1", 2, 32, 50)
    save_checkpoint(Checkpoint(config, weights, "random", tmp_path / "v5.bin"), tmp_path / "v5.bin")
    from rwkv_export.checkpoint import rwkvcpp

    raw, _ = rwkvcpp.read_rwkvcpp(tmp_path / "v5.bin")
    raw["blocks.1.att.time_first"] = -raw["blocks.1.att.time_first"].abs()
    with pytest.raises(RwkvExportError, match=r"'blocks.1.att.time_first' should hold exp\(time_first\) \(all positive\)"):
        rwkvcpp.from_rwkvcpp(raw, "5.1")
