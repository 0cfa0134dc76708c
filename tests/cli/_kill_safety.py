"""SIGKILL `rwkv-export export` / `build` at random moments and classify what the target holds
(tests/cli/test_kill_safety.py, scripts/kill_safety.py).

A target is "absent", or a *complete* export (manifest.json parses; every graph file and engine
plan it names has the recorded sha256; no temporary file inside) that is the old one or the new
one, told apart by the manifest (export: the source checkpoint's name; build: the engines' max
sequence length), else "mixed". Temporary siblings (`.TARGET.*`) a killed run leaves must be gone
after the next complete run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwkv_export.fileio import sha256_file

EXE = [sys.executable, "-c", "from rwkv_export.cli import main; main()"]


def complete(target: Path) -> dict[str, Any] | None:
    """The manifest of a complete export at `target`, else None."""
    try:
        manifest = json.loads((target / "manifest.json").read_text())
        for graph in manifest["graphs"].values():
            for name, digest in graph["sha256"].items():
                if sha256_file(target / name) != digest:
                    return None
        for entry in manifest.get("engines", {}).values():
            if sha256_file(target / entry["file"]) != entry["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(p.name.startswith(".") for p in target.rglob("*")):
        return None
    return dict(manifest)


def label_export(manifest: dict[str, Any]) -> str:
    return "new" if Path(manifest["source"]["path"]).name.startswith("new") else "old"


OLD_MAX_SEQ, NEW_MAX_SEQ = 8, 24


def label_build(manifest: dict[str, Any]) -> str:
    prefill = manifest.get("engines", {}).get("prefill")
    return "new" if prefill is not None and prefill["profile"]["tokens"][2][1] == NEW_MAX_SEQ else "old"


def setup(root: Path, rtx: bool) -> dict[str, Mode]:
    """Checkpoints old.pth / new.pth (RWKV-4, 1 x 16, vocab 20), their reference exports, and the modes."""
    from rwkv_export import engine
    from rwkv_export.checkpoint import Checkpoint, save_checkpoint
    from rwkv_export.checkpoint.random import random_weights
    from rwkv_export.export import export_checkpoint

    for name, seed in (("old", 1), ("new", 2)):
        config, weights = random_weights("4", 1, 16, 20, seed=seed)
        save_checkpoint(Checkpoint(config, weights, "random", root / f"{name}.pth"), root / f"{name}.pth")
    export_checkpoint(root / "old.pth", root / "ref-old")
    modes = {
        "export, new target": Mode("export new", ["export", "new.pth", "-o", "target", "-q"], None, label_export),
        "export --force over an export": Mode(
            "export --force", ["export", "new.pth", "-o", "target", "--force", "-q"], root / "ref-old", label_export
        ),
    }
    if rtx:
        build = ["build", "target", "--target", "tensorrt-rtx", "--max-batch", "2", "-q", "--max-seq", str(NEW_MAX_SEQ)]
        shutil.copytree(root / "ref-old", root / "ref-built")
        engine.build(root / "ref-built", engine.BuildOptions(target="tensorrt-rtx", max_batch=2, max_seq=OLD_MAX_SEQ))
        modes["build into an export"] = Mode("build", build, root / "ref-old", label_build)
        modes["build over built engines"] = Mode("rebuild", build, root / "ref-built", label_build)
    return modes


def state(target: Path, label: Any) -> str:
    if not target.exists():
        return "absent"
    manifest = complete(target)
    return "mixed" if manifest is None else label(manifest)


def siblings(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*"))


def run(args: list[str], cwd: Path, kill_after: float | None = None) -> tuple[int, float]:
    """Run the CLI in its own session; SIGKILL the whole group after `kill_after` seconds (None: let it finish)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [*EXE, *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group: the TensorRT build child dies too
        proc.wait()
        return -9, time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"rwkv-export {' '.join(args)} failed: {proc.stderr.read() if proc.stderr else ''}")
    return proc.returncode, time.monotonic() - start


@dataclass
class Mode:
    """One kind of trial: `prepare` puts the starting state at the target, `args` is the command."""

    name: str
    args: list[str]
    start: Path | None  # a pristine copy of the starting state (None: target absent)
    label: Any
    counts: dict[str, int] = field(default_factory=dict)


def prepare(mode: Mode, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    if mode.start is not None:
        shutil.copytree(mode.start, target)


def trials(mode: Mode, target: Path, cwd: Path, n: int, rng: random.Random, say: Any = print) -> dict[str, int]:
    """`n` runs of mode, each killed at a uniform moment in [0, 1.1 x one full run]; counts of final states."""
    prepare(mode, target)
    _, full = run(mode.args, cwd)  # one complete run: its duration, and the new state it leaves
    assert state(target, mode.label) == "new", f"{mode.name}: a complete run did not leave the new export"
    for i in range(n):
        prepare(mode, target)
        delay = rng.uniform(0, 1.1 * full)
        code, _ = run(mode.args, cwd, kill_after=delay)
        got = state(target, mode.label)
        left = len(siblings(target))
        mode.counts[got] = mode.counts.get(got, 0) + 1
        mode.counts["killed"] = mode.counts.get("killed", 0) + (code == -9)
        mode.counts["left siblings"] = mode.counts.get("left siblings", 0) + (left > 0)
        say(f"{mode.name} trial {i + 1}/{n}: killed at {delay:.1f}s of {full:.1f}s -> {got}, {left} sibling(s) left")
    prepare(mode, target)
    run(mode.args, cwd)  # the next complete run cleans what the killed ones left
    mode.counts["siblings after next run"] = len(siblings(target))
    return mode.counts
