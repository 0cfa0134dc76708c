"""The reference model against independent implementations: the `rwkv` package and transformers.

Both run in float32, so the comparison tolerance is float32's: 2e-5 of the largest |logit|.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_export.checkpoint import load_checkpoint, save_checkpoint
from rwkv_export.model import build_model, initial_state
from tests.conftest import make_checkpoint, requires_shared, tiny_model
from tests.model import oracles

pytest.importorskip("rwkv", reason="the `rwkv` package (test extra) is not installed")
pytest.importorskip("transformers", reason="transformers (test extra) is not installed")

SHAPES = [(2, 32, 60, None), (4, 64, 97, 200), (7, 96, 300, None)]  # layers, embd, vocab, ffn
TOL = 2e-5


def _reference(ckpt_path: Path, tokens: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(ckpt, "float64")
    state = initial_state(ckpt.config, tokens.shape[0], torch.float64)
    logits, new = model.forward_sequence(tokens, state)
    return logits.numpy(), [s.numpy() for s in new]


def _check(name: str, logits: np.ndarray, ref: np.ndarray, state: list[np.ndarray], ref_state: list[np.ndarray]) -> None:
    scale = np.abs(ref).max()
    err = np.abs(logits - ref).max() / scale
    assert err < TOL, f"{name}: logits rel error {err:.2e} (max abs {np.abs(logits - ref).max():.2e})"
    assert (logits.argmax(-1) == ref.argmax(-1)).all(), f"{name}: argmax differs"
    for field, a, b in zip(("x_att", "aa", "bb", "pp", "x_ffn"), state, ref_state):
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1.0)
        assert err < 1e-4, f"{name}: state {field} rel error {err:.2e}"


@pytest.mark.parametrize("layers,embd,vocab,ffn", SHAPES)
def test_rwkv_package(tmp_path: Path, layers: int, embd: int, vocab: int, ffn: int | None) -> None:
    path = make_checkpoint(tmp_path / "m.pth", layers, embd, vocab, ffn, seed=layers)
    tokens = torch.randint(0, vocab, (1, 37), generator=torch.Generator().manual_seed(1))
    ref, ref_state = _reference(path, tokens)
    logits, state = oracles.rwkv_package(path, tokens[0].tolist())
    _check("rwkv package", logits, ref[0], state, [s[:, 0] for s in ref_state])


@pytest.mark.parametrize("layers,embd,vocab,ffn", SHAPES)
def test_transformers(tmp_path: Path, layers: int, embd: int, vocab: int, ffn: int | None) -> None:
    path = make_checkpoint(tmp_path / "m.pth", layers, embd, vocab, ffn, seed=layers)
    save_checkpoint(load_checkpoint(path), tmp_path / "hf", "hf")
    tokens = torch.randint(0, vocab, (3, 29), generator=torch.Generator().manual_seed(2))
    ref, ref_state = _reference(path, tokens)
    logits, state = oracles.transformers_model(tmp_path / "hf", tokens)
    _check("transformers", logits, ref, state, ref_state)


@requires_shared
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_tiny_trained_v4_three_way(tmp_path: Path, precision: str) -> None:
    """Real trained weights: reference, `rwkv` and transformers agree on the rwkv.cpp tiny model."""
    ckpt = load_checkpoint(tiny_model("4v0-660K", precision))
    pth = tmp_path / "tiny.pth"
    # The peers compute in float32: give them the float32 view of the same weights.
    ckpt.weights = {k: v.float() for k, v in ckpt.weights.items()}
    save_checkpoint(ckpt, pth)
    save_checkpoint(ckpt, tmp_path / "hf", "hf")
    text = list(b"The quick brown fox jumps over the lazy dog.")
    tokens = torch.tensor([text])
    ref, ref_state = _reference(pth, tokens)
    logits, state = oracles.rwkv_package(pth, text)
    _check(f"rwkv package on tiny {precision}", logits, ref[0], state, [s[:, 0] for s in ref_state])
    logits, state = oracles.transformers_model(tmp_path / "hf", tokens)
    _check(f"transformers on tiny {precision}", logits, ref, state, ref_state)
