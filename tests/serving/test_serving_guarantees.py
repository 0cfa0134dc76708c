"""verify's serving guarantees (rwkv_export/parity/guarantees.py): continuation through a state
file, chunking, batch invariance, step = prefill at T = 1.

On every version (4, 5.2, 6, 7): the tiny trained models of ../shared (skipped with the reason when
absent) and small random checkpoints, through `rwkv-export verify` (torch float32 and ONNX Runtime;
float16 too for one random model), each guarantee's figure read back from the JSON report. And the
checks catch what they claim to: backends with a planted fault fail the matching guarantee.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.cli import cli
from rwkv_export.parity import guarantees
from rwkv_export.parity.backends import TorchBackend
from rwkv_export.parity.scenario import Scenario
from rwkv_export.parity.tolerances import DEFAULT_TOLERANCES
from tests.conftest import requires_shared, tiny_model
from tests.serving.serving_exports import exported, random_checkpoint

TINY = {"4": "4v0-660K", "5.2": "5v2-730K", "6": "6v0-1m", "7": "7v0-834K"}
F32 = DEFAULT_TOLERANCES["float32"]


def verify_guarantees(args: list[object], tmp_path: Path) -> dict[str, dict[str, dict]]:
    report = tmp_path / "parity.json"
    result = CliRunner().invoke(cli, ["verify", *map(str, args), "--seq", "8", "--steps", "3", "--json", str(report), "-q"])
    assert result.exit_code == 0, result.output
    assert "guarantee (self-consistency)  continuation  chunking" in result.stdout
    backends = json.loads(report.read_text())["backends"]
    return {b["name"]: b["guarantees"] for b in backends if b["status"] != "skipped"}


def assert_all_hold(found: dict[str, dict[str, dict]], backends: set[str]) -> None:
    assert set(found) == backends
    for name, promises in found.items():
        assert list(promises) == list(guarantees.NAMES)
        for what, g in promises.items():
            assert g["status"] == "pass" and g["greedy_identical"] and g["tolerance_used"] <= 1, (name, what, g)
            assert np.isfinite(g["error"])


@requires_shared
@pytest.mark.parametrize("version", list(TINY))
def test_guarantees_hold_on_tiny_trained_models(version: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    ckpt = tiny_model(TINY[version])
    directory = exported(tmp_path_factory, ckpt)
    found = verify_guarantees([directory, "--checkpoint", ckpt, "--backends", "torch-float32,ort-cpu-float32"], tmp_path)
    assert_all_hold(found, {"torch-float32", "ort-cpu-float32"})


@pytest.mark.parametrize("version", ["4", "5.2", "6", "7"])
def test_guarantees_hold_on_random_checkpoints(version: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    ckpt = random_checkpoint(tmp_path_factory, version)
    if version == "5.2":  # both dtypes, through verify's own exports
        found = verify_guarantees([ckpt, "--backends", "torch,ort-cpu", "--export-dir", tmp_path / "x"], tmp_path)
        assert_all_hold(found, {"torch-float32", "torch-float16", "ort-cpu-float32", "ort-cpu-float16"})
        return
    directory = exported(tmp_path_factory, ckpt)
    found = verify_guarantees([directory, "--checkpoint", ckpt, "--backends", "torch-float32,ort-cpu-float32"], tmp_path)
    assert_all_hold(found, {"torch-float32", "ort-cpu-float32"})


# --- the checks catch planted faults --------------------------------------------------------------


class RowLeak(TorchBackend):
    """Batches of more than two rows (a "large batch" code path) pull every row's state 1e-3 of the
    way to the batch mean: rows see each other. The scenario's own batch of 2 is unaffected."""

    def prefill(self, tokens, state=None):  # type: ignore[no-untyped-def]
        logits, new = super().prefill(tokens, state)
        if np.shape(tokens)[0] <= 2:
            return logits, new
        return logits, {n: v + 1e-3 * (v.mean(axis=1, keepdims=True) - v) for n, v in new.items()}


class ForgetsFFN(TorchBackend):
    """Each prefill starts its x_ffn from the initial state, whatever it was given."""

    def prefill(self, tokens, state=None):  # type: ignore[no-untyped-def]
        if state is not None:
            state = {**state, "x_ffn": self.initial_state(np.shape(tokens)[0])["x_ffn"]}
        return super().prefill(tokens, state)


class StepDrift(TorchBackend):
    """The step form returns logits off by 1e-3 of their scale."""

    def step(self, tokens, state):  # type: ignore[no-untyped-def]
        logits, new = super().step(tokens, state)
        return logits + 1e-3 * np.abs(logits).max(axis=-1, keepdims=True), new


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_checkpoint(random_checkpoint(tmp_path_factory, "4"))


def _check(backend_type: type, checkpoint) -> dict[str, guarantees.GuaranteeResult]:  # type: ignore[no-untyped-def]
    scen = Scenario.random(checkpoint.config.vocab_size, 2, 8, 3, seed=1)
    return {g.name: g for g in guarantees.check_all(backend_type(checkpoint, "float32"), scen, F32)}


def test_a_healthy_backend_holds_every_guarantee(checkpoint) -> None:  # type: ignore[no-untyped-def]
    found = _check(TorchBackend, checkpoint)
    assert all(g.passed for g in found.values()), found
    assert found["continuation"].error < 1e-6 and found["step=prefill"].error < 1e-6


@pytest.mark.parametrize(
    "fault, broken", [(RowLeak, {"batch"}), (ForgetsFFN, {"continuation", "chunking", "step=prefill"}), (StepDrift, {"step=prefill"})]
)
def test_planted_faults_break_their_guarantee(checkpoint, fault: type, broken: set[str]) -> None:  # type: ignore[no-untyped-def]
    found = _check(fault, checkpoint)
    assert {name for name, g in found.items() if not g.passed} == broken, {n: (g.used, g.detail) for n, g in found.items()}
    for name in broken:
        assert found[name].detail and (found[name].used > 1 or not found[name].greedy_identical)


def test_chunk_plans_cover_the_prompt() -> None:
    for length in (1, 2, 3, 8, 16):
        for sizes in guarantees.chunk_plans(length):
            assert sum(sizes) == length and min(sizes) >= 1 and len(sizes) >= 2
    assert [1] * 8 in guarantees.chunk_plans(8) and [7, 1] in guarantees.chunk_plans(8)


def test_a_broken_guarantee_fails_the_backend_in_the_report(checkpoint) -> None:  # type: ignore[no-untyped-def]
    """verify's judgement: a backend that matches the oracle but breaks a guarantee fails (exit 1),
    named in the reason, the second table and the JSON."""
    from rwkv_export.parity import report, scenario

    scen = Scenario.random(checkpoint.config.vocab_size, 2, 8, 3, seed=1)
    with TorchBackend(checkpoint, "float64") as oracle:
        reference = scenario.run(oracle, scen)
    backend = RowLeak(checkpoint, "float32")
    trace = scenario.run(backend, scen, scenario.step_feed(reference))
    result = report.assess("leaky", "float32", reference, trace, F32)
    assert result.status == "pass"  # the scenario's batch of 2 never takes the leaking path
    result = report.add_guarantees(result, guarantees.check_all(backend, scen, F32))
    assert result.failed and result.reason.startswith("guarantee 'batch' broken at row 1 of 3")
    table = report.table([result])
    row = next(line for line in table.splitlines() if line.startswith("leaky") and "ok" in line)
    assert row.split()[2::2] == ["ok", "ok", "FAIL", "ok"]  # continuation, chunking, batch, step=prefill
    promises = json.loads(report.to_json([result], {}))["backends"][0]["guarantees"]
    assert promises["batch"]["status"] == "fail" and promises["batch"]["tolerance_used"] > 1
    assert [promises[n]["status"] for n in ("continuation", "chunking", "step=prefill")] == ["pass"] * 3
