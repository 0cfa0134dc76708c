"""Seeded fuzz of manifest.json through `run`, `verify` and `build` (scripts/fuzz_manifest.py, smaller).

Every mutation that must be refused ends in exit 2 with exactly one line on stderr, no traceback, no
hang (a 20 s watchdog per call) and no silent acceptance; deleting an optional field either runs or
fails the same clean way. Kinds: deleted / retyped / nulled / unknown fields, file names escaping the
directory, huge, zero and negative dims, NaN / Inf values and initial files, sha256 and graph-file
changes, empty graphs, truncation, garbage, non-UTF-8, deep nesting, FIFOs and links out.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

CASES, SEED = 240, 20261202


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("fuzz_manifest", REPO / "scripts" / "fuzz_manifest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_manifest"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fuzz() -> Any:
    return _script()


@pytest.fixture(scope="module")
def base(fuzz: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return fuzz.make_export(tmp_path_factory.mktemp("fuzz"))


def test_every_mutated_manifest_is_one_clean_line(
    fuzz: Any, base: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RWKV_EXPORT_CACHE", str(tmp_path / "cache"))
    ckpt, pristine = base
    cases = fuzz.all_cases(pristine, CASES, SEED)
    assert len(cases) >= CASES and {c.kind for c in cases} == set(fuzz.KINDS)
    start = time.perf_counter()
    tally = fuzz.run_cases(cases, pristine, ckpt, timeout=20)
    elapsed = time.perf_counter() - start
    assert not tally.bad, "\n".join(tally.bad[:20])
    calls = sum(sum(c.values()) for c in tally.counts.values())
    clean = sum(c.get("clean", 0) for c in tally.counts.values())
    assert calls >= 2 * CASES and clean >= calls - sum(c.get("benign ok", 0) for c in tally.counts.values())
    assert tally.slowest < 20 and elapsed < 300, (tally.slowest, elapsed)


def test_the_pristine_export_runs(fuzz: Any, base: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the unmutated copy runs (exit 0), so the refusals above are the mutations' doing."""
    monkeypatch.setenv("RWKV_EXPORT_CACHE", str(tmp_path / "cache"))
    ckpt, pristine = base
    outcome, detail, _ = fuzz.classify(fuzz.verbs(pristine, ckpt, benign=True)["run"], 20)
    assert outcome == "accepted", detail
