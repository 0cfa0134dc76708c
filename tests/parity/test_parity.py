"""Parity stage: metrics on known inputs, tolerances, backend selection, and judging whole scenarios
(torch backends, plus a wrapper that injects an error at a chosen step, tensor and layer)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.errors import RwkvExportError
from rwkv_export.parity import backends, compare, report, scenario, tolerances
from rwkv_export.parity.backends import TorchBackend
from tests.conftest import make_checkpoint

# --- compare -------------------------------------------------------------------------------------


def test_tensor_metrics_known_values() -> None:
    ref = np.array([1.0, -2.0, 4.0, 0.0])
    got = np.array([1.1, -2.0, 3.0, 1e-3])
    m = compare.tensor_metrics(ref, got)
    assert m.max_abs == pytest.approx(1.0) and m.scale == 4.0 and m.normalized == pytest.approx(0.25)
    assert m.mean_abs == pytest.approx((0.1 + 0 + 1 + 1e-3) / 4)
    assert m.median_abs == pytest.approx((0.1 + 1e-3) / 2)
    assert m.max_rel > 1e20  # elementwise relative error explodes at ref = 0: why tolerances use `normalized`
    assert m.nonfinite == 0


def test_tensor_metrics_flags_nan_and_shape() -> None:
    m = compare.tensor_metrics(np.ones(3), np.array([1.0, np.nan, 1.0]))
    assert m.nonfinite == 1 and m.max_abs == np.inf
    with pytest.raises(ValueError, match="shape"):
        compare.tensor_metrics(np.ones(3), np.ones(4))


def test_logits_metrics() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 20))
    same = compare.logits_metrics(ref, ref.copy())
    assert same.kl_max == pytest.approx(0, abs=1e-12) and same.argmax_agree == 1 and same.top5_agree == 1
    flipped = ref.copy()
    flipped[0] = -flipped[0]
    other = compare.logits_metrics(ref, flipped)
    assert other.argmax_agree == pytest.approx(2 / 3) and other.kl_max > 0.1 and other.top5_agree < 1


def test_kl_matches_definition() -> None:
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert compare.kl_divergence(np.log(p), np.log(q)) == pytest.approx(expected)


def test_greedy_match_length() -> None:
    assert compare.greedy_match_length([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert compare.greedy_match_length([1, 2], [1, 2]) == 2
    assert compare.greedy_match_length([[1, 2, 3], [1, 2, 3]], [[1, 2, 3], [0, 2, 3]]) == 0


def test_per_layer_error() -> None:
    ref = np.ones((3, 2, 4))
    got = ref.copy()
    got[1, 0, 2] += 0.5
    max_abs, scale = compare.per_layer_error(ref, got)
    np.testing.assert_allclose(max_abs, [0, 0.5, 0])
    np.testing.assert_allclose(scale, [1, 1, 1])


# --- tolerances ----------------------------------------------------------------------------------


def test_tolerance_overrides() -> None:
    assert tolerances.parse_overrides(("float16=3e-2",), "--rtol") == {"float16": 0.03}
    assert tolerances.parse_overrides(("int8=0.4",), "--rtol") == {"int8": 0.4}  # quantized exports have their own
    for bad in ("float16", "int3=1", "float16=x", "float16=-1"):
        with pytest.raises(RwkvExportError, match="--rtol"):
            tolerances.parse_overrides((bad,), "--rtol")
    table = tolerances.tolerances_with({"logits_rtol": {"float16": 0.5}})
    assert table["float16"].logits_rtol == 0.5 and table["float32"] == tolerances.DEFAULT_TOLERANCES["float32"]
    assert all(t.reason for t in tolerances.DEFAULT_TOLERANCES.values())


def test_backend_selection() -> None:
    assert backends.select(["ort-cpu"]) == ["ort-cpu-float32", "ort-cpu-float16"]
    assert backends.select(["*-float16"]) == ["torch-float16", "ort-cpu-float16", "ort-cuda-float16", "tensorrt-float16"]
    assert "torch-float64" in backends.select([])
    with pytest.raises(RwkvExportError, match="matches no backend"):
        backends.select(["onnx"])


# --- scenarios -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_checkpoint(make_checkpoint(tmp_path_factory.mktemp("parity") / "r.pth", layers=3, embd=32, vocab=61, seed=5))


@pytest.fixture(scope="module")
def oracle_trace(ckpt: Any) -> tuple[scenario.Scenario, scenario.Trace]:
    scen = scenario.Scenario.random(ckpt.config.vocab_size, batch=2, seq=9, steps=5, seed=1)
    return scen, scenario.run(TorchBackend(ckpt, "float64"), scen)


class Perturbed:
    """A backend that adds `delta` to one state tensor of one layer after one step: a planted bug."""

    def __init__(self, inner: TorchBackend, step: int, name: str, layer: int, delta: float) -> None:
        self.inner, self.at, self.name, self.layer, self.delta = inner, step, name, layer, delta
        self.calls = 0

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        return self.inner.initial_state(batch)

    def prefill(self, tokens: np.ndarray, state: Any = None) -> Any:
        return self.inner.prefill(tokens, state)

    def step(self, tokens: np.ndarray, state: Any) -> Any:
        self.calls += 1
        logits, new = self.inner.step(tokens, state)
        if self.calls == self.at:
            new = {**new, self.name: new[self.name].copy()}
            new[self.name][self.layer] += self.delta
        return logits, new

    def to_host(self, state: Any) -> Any:
        return state


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_torch_backends_pass(ckpt: Any, oracle_trace: Any, dtype: str) -> None:
    scen, ref = oracle_trace
    trace = scenario.run(TorchBackend(ckpt, dtype), scen, scenario.step_feed(ref))
    result = report.assess(f"torch-{dtype}", dtype, ref, trace, tolerances.DEFAULT_TOLERANCES[dtype])
    assert result.status == "pass", result.reason
    assert [p.label for p in result.points] == ["prefill", *(f"step {i}" for i in range(1, 6)), "chunked prefill"]
    assert result.greedy_match == result.greedy_total == 6


def test_planted_error_is_located(ckpt: Any, oracle_trace: Any) -> None:
    scen, ref = oracle_trace
    bug = Perturbed(TorchBackend(ckpt, "float32"), step=3, name="bb", layer=1, delta=0.05)
    result = report.assess(
        "bugged", "float32", ref, scenario.run(bug, scen, scenario.step_feed(ref)), tolerances.DEFAULT_TOLERANCES["float32"]
    )
    assert result.status == "fail"
    assert result.reason.startswith("first diverges at step 3: state 'bb' layer 1"), result.reason
    assert "FAIL" in report.table([result]) and "first diverges at step 3" in report.table([result])
    assert '"verdict": "fail"' in report.to_json([result], {})


def test_chunked_prefill_equals_whole_on_oracle(ckpt: Any, oracle_trace: Any) -> None:
    scen, ref = oracle_trace
    oracle = TorchBackend(ckpt, "float64")
    logits, state = oracle.prefill(scen.tokens)
    chunked = ref.points[-1]
    np.testing.assert_allclose(chunked.logits[:, -1], logits[:, -1], rtol=0, atol=1e-10)
    for name in state:
        np.testing.assert_allclose(chunked.state[name], state[name], rtol=0, atol=1e-10, err_msg=name)
