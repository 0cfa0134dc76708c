"""The Runner contract on the CPU: every backend refuses the same mistakes with the same one line.

ONNX Runtime (OrtRunner over an export), the torch reference (TorchRunner) and both drivers
(ExportedModel, TorchReference): wrong state shape or dtype, batch dims that disagree, token ids
out of range, missing or unknown inputs, infer before activate. Each is a RwkvExportError of one
line naming the input and what was expected; a correct call on the same runner then succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.errors import RwkvExportError
from rwkv_export.manifest import Manifest
from rwkv_export.runtime import ExportedModel, OrtRunner, Runner
from rwkv_export.runtime.torch_reference import TorchReference
from tests.conftest import make_checkpoint

VOCAB, LAYERS, EMBD = 97, 2, 32


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from rwkv_export.export import export_checkpoint

    root = tmp_path_factory.mktemp("runner")
    ckpt = make_checkpoint(root / "r.pth", layers=LAYERS, embd=EMBD, vocab=VOCAB, seed=3)
    export_checkpoint(ckpt, root / "out")
    return ckpt, root / "out"


def _ort_runner(export: tuple[Path, Path]) -> Runner:
    manifest = Manifest.read(export[1])
    graph = manifest.graph("step")
    return OrtRunner(manifest.path(graph.file), "cpu", 1, graph=graph, vocab_size=manifest.model.vocab_size)


def _torch_runner(export: tuple[Path, Path]) -> Runner:
    reference = TorchReference(load_checkpoint(export[0]), "float32")
    runner = reference.runners["step"]
    runner.deactivate()  # fresh, as a runner is before `with`
    return runner


RUNNERS = {"onnxruntime": _ort_runner, "torch": _torch_runner}


def _feeds(batch: int = 2) -> dict[str, np.ndarray]:
    state = {n: np.zeros((LAYERS, batch, EMBD), np.float32) for n in ("x_att", "aa", "bb", "pp", "x_ffn")}
    return {"tokens": np.arange(batch, dtype=np.int64), **state}


def _one_line(call: Callable[[], Any], fragment: str) -> None:
    with pytest.raises(RwkvExportError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and fragment in message, message


BAD_FEEDS: list[tuple[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], str]] = [
    ("missing", lambda f: {k: v for k, v in f.items() if k != "aa"}, "missing input 'aa'"),
    ("unknown", lambda f: {**f, "bogus": f["aa"]}, "unknown input 'bogus'"),
    ("state-shape", lambda f: {**f, "aa": f["aa"][:, :, :31]}, "input 'aa' has shape [2, 2, 31], expected [2, 'batch', 32]"),
    ("state-rank", lambda f: {**f, "pp": f["pp"][0]}, "input 'pp' has shape [2, 32], expected [2, 'batch', 32]"),
    ("state-dtype", lambda f: {**f, "bb": f["bb"].astype(np.float64)}, "input 'bb' has dtype float64, expected float32"),
    ("batch-disagrees", lambda f: {**f, "x_ffn": np.zeros((LAYERS, 3, EMBD), np.float32)}, "input 'x_ffn' has batch 3 but"),
    ("token-high", lambda f: {**f, "tokens": np.array([1, VOCAB], np.int64)}, f"token id {VOCAB} is out of range (vocab {VOCAB}"),
    ("token-negative", lambda f: {**f, "tokens": np.array([-1, 0], np.int64)}, "token id -1 is out of range"),
    ("token-dtype", lambda f: {**f, "tokens": np.array([1.0, 2.0])}, "input 'tokens' has dtype float64, expected int64"),
]


@pytest.mark.parametrize("backend", list(RUNNERS))
def test_infer_before_activate(export: tuple[Path, Path], backend: str) -> None:
    runner = RUNNERS[backend](export)
    _one_line(lambda: runner.infer(_feeds()), "infer() before activate()")


@pytest.mark.parametrize("case, mutate, fragment", BAD_FEEDS, ids=[c[0] for c in BAD_FEEDS])
@pytest.mark.parametrize("backend", list(RUNNERS))
def test_bad_feeds_are_one_line(export: tuple[Path, Path], backend: str, case: str, mutate: Any, fragment: str) -> None:
    with RUNNERS[backend](export) as runner:
        _one_line(lambda: runner.infer(mutate(_feeds())), fragment)
        good = runner.infer(_feeds())  # the same runner still works after refusing
    assert good["logits"].shape == (2, VOCAB) and np.isfinite(good["logits"]).all()
    assert set(good) == {"logits", "x_att_out", "aa_out", "bb_out", "pp_out", "x_ffn_out"}


def test_ort_and_torch_runners_agree(export: tuple[Path, Path]) -> None:
    """The contract is the same computation too: one step from the initial state, float32 tolerance."""
    feeds = {**_feeds(), **Manifest.read(export[1]).initial_state(2)}
    with _ort_runner(export) as ort_runner, _torch_runner(export) as torch_runner:
        a, b = ort_runner.infer(feeds), torch_runner.infer(feeds)
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["pp_out"], b["pp_out"], rtol=1e-4, atol=1e-5)


def _sessions(export: tuple[Path, Path]) -> dict[str, Any]:
    return {"exported": ExportedModel(export[1], "cpu", 1), "torch": TorchReference(load_checkpoint(export[0]), "float32")}


@pytest.mark.parametrize("which", ["exported", "torch"])
def test_drivers_refuse_the_same_way(export: tuple[Path, Path], which: str) -> None:
    model = _sessions(export)[which]
    with model:
        state = model.initial_state(2)
        _one_line(lambda: model.step(np.array([1, VOCAB]), state), f"token id {VOCAB} is out of range for this model")
        _one_line(lambda: model.step(np.array([[1, 2]]), state), "step takes tokens shaped [batch], got [1, 2]")
        _one_line(lambda: model.prefill(np.array([1, 2])), "prefill takes tokens shaped [batch, seq], got [2]")
        _one_line(lambda: model.step(np.array([1, 2]), {**state, "aa": state["aa"][:, :1]}), "input 'aa' has batch 1 but")
        _one_line(lambda: model.step(np.array([1, 2]), {k: v for k, v in state.items() if k != "pp"}), "missing input 'pp'")
        _one_line(lambda: model.step(np.array([1, 2]), {**state, "wkv": state["aa"]}), "unknown input 'wkv'")
        _one_line(lambda: model.step(np.array([1, 2]), state["aa"]), "the state must be a dict of arrays")
        logits, new = model.step(np.array([1, 2]), state)
    assert logits.shape == (2, VOCAB) and set(new) == set(state)


def test_exported_model_before_activate(export: tuple[Path, Path]) -> None:
    model = ExportedModel(export[1], "cpu", 1)
    _one_line(lambda: model.prefill(np.array([[1, 2]])), "infer() before activate()")
    with model:
        logits, _ = model.prefill(np.array([[1, 2]]))
    assert logits.shape == (1, VOCAB)
    _one_line(lambda: model.step(np.array([1]), model.initial_state(1)), "infer() before activate()")  # after the block
