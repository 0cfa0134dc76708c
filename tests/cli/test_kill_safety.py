"""Kill safety: an output directory is absent, the old complete one or the new complete one, whatever
moment `export` or `build` is killed at; the temporary siblings a killed run leaves go on the next run.

The fileio cases below fake a killed run's leftovers (a sibling named after a dead process); the
trials SIGKILL the real CLI (tests/cli/_kill_safety.py; scripts/kill_safety.py runs >= 20 per mode).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rwkv_export.fileio import (
    atomic_directory,
    atomic_update,
    atomic_write_bytes,
    clean_stale_siblings,
)
from rwkv_export.kernels import trt_compat
from tests.cli import _kill_safety as ks


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_killed_runs_siblings_are_removed_by_the_next_run(tmp_path: Path) -> None:
    target = tmp_path / "out"
    dead = _dead_pid()
    for kind in ("partial", "stage", "old"):
        (tmp_path / f".out.{kind}-{dead}-x1").mkdir()
        (tmp_path / f".out.{kind}-{dead}-x1" / "f").write_text(kind)
    live = tmp_path / f".out.partial-{os.getpid()}-x2"  # a run still going: left alone
    live.mkdir()
    with atomic_directory(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _tree(target) == {"new.txt": b"new"}
    assert sorted(p.name for p in tmp_path.glob(".out.*")) == [live.name]


def test_previous_export_restored_when_a_swap_was_killed_midway(tmp_path: Path) -> None:
    old = tmp_path / f".out.old-{_dead_pid()}-x1"
    (old / "dir").mkdir(parents=True)
    (old / "dir" / "manifest.json").write_text("{}")
    clean_stale_siblings(tmp_path / "out")
    assert _tree(tmp_path / "out") == {"manifest.json": b"{}"} and not list(tmp_path.glob(".out.*"))


def test_force_replaces_in_one_step_and_failure_keeps_the_old(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target, force=True) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("killed")
    assert _tree(target) == {"a": b"old"}
    with atomic_directory(target, force=True) as tmp:
        (tmp / "b").write_text("new")
    assert _tree(target) == {"b": b"new"} and not list(tmp_path.glob(".out.*"))


def test_atomic_update_stages_a_linked_copy(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "graph.onnx").write_bytes(b"graph")
    (target / "manifest.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_update(target) as stage:
        atomic_write_bytes(stage / "manifest.json", b'{"engines": 1}')
        (stage / "step.plan").write_bytes(b"plan")
        raise RuntimeError("killed")
    assert _tree(target) == {"graph.onnx": b"graph", "manifest.json": b"{}"}
    with atomic_update(target) as stage:
        assert os.stat(stage / "graph.onnx").st_ino == os.stat(target / "graph.onnx").st_ino  # linked, not copied
        atomic_write_bytes(stage / "manifest.json", b'{"engines": 1}')
        (stage / "step.plan").write_bytes(b"plan")
        assert (target / "manifest.json").read_text() == "{}"  # nothing changes until the block ends
    assert _tree(target) == {"graph.onnx": b"graph", "manifest.json": b'{"engines": 1}', "step.plan": b"plan"}
    assert not list(tmp_path.glob(".out.*"))


@pytest.mark.slow
def test_export_killed_at_random_moments(tmp_path: Path) -> None:
    modes = ks.setup(tmp_path, rtx=False)
    counts = ks.trials(modes["export --force over an export"], tmp_path / "target", tmp_path, 2, random.Random(3), say=print)
    assert counts.get("mixed", 0) == 0 and counts["siblings after next run"] == 0, counts
    assert counts.get("old", 0) + counts.get("new", 0) == 2, counts  # --force never leaves the target absent


@pytest.mark.slow
@pytest.mark.skipif("tensorrt-rtx" not in trt_compat.available_targets(), reason="needs TensorRT-RTX: pip install 'rwkv-export[tensorrt]'")
def test_build_killed_at_random_moments(tmp_path: Path) -> None:
    modes = ks.setup(tmp_path, rtx=True)
    counts = ks.trials(modes["build over built engines"], tmp_path / "target", tmp_path, 2, random.Random(4), say=print)
    assert counts.get("mixed", 0) == 0 and counts.get("absent", 0) == 0 and counts["siblings after next run"] == 0, counts
