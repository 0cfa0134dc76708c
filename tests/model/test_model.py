"""Reference models of every version: the forms agree, dtypes stay within stated tolerances, RWKV-4
real weights match rwkv.cpp (the v5-7 trained-model and `rwkv` package checks: test_model_trained.py).

Tolerances, relative to the largest |logit| of the float64 run, are the version registry's
`logits_rtol` (with their reasons in rwkv_export/versions/info.py and rwkv5.py): float32 1e-5,
float16 2e-2 (with rescale), bfloat16 8e-2; RWKV-5.1 3e-2 and 0.15 in half precision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rwkv_export.checkpoint import Checkpoint, load_checkpoint
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.errors import RwkvExportError
from rwkv_export.model import ChannelState, RWKVModel, build_model, check_tokens, initial_state, model_class, random_state
from rwkv_export.versions import KNOWN_VERSIONS, version_info
from tests.conftest import TINY, requires_shared, tiny_model

TOL = version_info("4").logits_rtol  # RWKV-4's: float32 1e-5, float16 2e-2, bfloat16 8e-2
VOCAB = 61


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(version: str, dtype: str = "float64", layers: int = 3, embd: int = 32, seed: int = 0) -> RWKVModel:
    config, weights = random_weights(version, layers, embd, VOCAB, seed=seed)
    return model_class(version)(config, weights, dtype).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _tokens(batch: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


# --- the forms agree ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KNOWN_VERSIONS)
@pytest.mark.parametrize("T", [1, 7, 23, 1024])
def test_sequence_equals_steps_float64(version: str, T: int) -> None:
    """The step form is the block at T = 1: T steps reproduce one prefill of T tokens, from a random state."""
    model = _model(version, layers=2)
    tokens = _tokens(2, T, seed=T)
    state0 = random_state(model.config, 2, seed=1, dtype=torch.float64)
    logits_seq, state_seq = model.forward_sequence(tokens, state0, all_logits=True)
    state = state0
    for t in range(T):
        logits, state = model.forward_step(tokens[:, t], state)
        diff = (logits - logits_seq[:, t]).abs().max().item()
        assert diff < 1e-12, f"RWKV-{version} T={T} t={t}: step vs sequence logits differ by {diff:.2e}"
    for name, a, b in zip(type(state)._fields, state, state_seq):
        diff = (a - b).abs().max().item()
        assert diff < 1e-11 * max(1.0, b.abs().max().item()), f"RWKV-{version} T={T}: state {name} differs by {diff:.2e}"


@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_split_prefill_continues(version: str) -> None:
    model = _model(version)
    tokens = _tokens(2, 40, seed=5)
    state = model.initial_state(2)
    whole, whole_state = model.forward_sequence(tokens, state)
    _, mid = model.forward_sequence(tokens[:, :17], state)
    _, mid = model.forward_sequence(tokens[:, 17:18], mid)
    part, part_state = model.forward_sequence(tokens[:, 18:], mid)
    assert (whole - part).abs().max().item() < 1e-12, f"RWKV-{version}: split prefill logits differ"
    for name, a, b in zip(type(whole_state)._fields, whole_state, part_state):
        assert (a - b).abs().max().item() < 1e-10, f"RWKV-{version}: split prefill state {name} differs"


@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_batch_rows_are_independent(version: str) -> None:
    model = _model(version)
    tokens = _tokens(4, 19, seed=3)
    state = random_state(model.config, 4, seed=4, dtype=torch.float64)
    batch_logits, batch_state = model.forward_sequence(tokens, state)
    for b in range(4):
        row_state = type(state)(*(s[:, b : b + 1] for s in state))
        logits, new = model.forward_sequence(tokens[b : b + 1], row_state)
        assert (logits[0] - batch_logits[b]).abs().max().item() < 1e-12, f"RWKV-{version}: row {b} depends on other rows"
        for name, a, c in zip(type(new)._fields, new, batch_state):
            assert (a[:, 0] - c[:, b]).abs().max().item() < 1e-12, f"RWKV-{version}: row {b} state {name}"


# --- dtypes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 64, 1024])
@pytest.mark.parametrize("from_initial", [True, False])
def test_v4_float32_state_matches_float64(T: int, from_initial: bool) -> None:
    """RWKV-4's state per tensor in float32 (pp is a log-scale max: compared relative to its size)."""
    m64, m32 = _model("4", layers=3, embd=48), _model("4", "float32", layers=3, embd=48)
    tokens = _tokens(3, T, seed=7)
    state = initial_state(m64.config, 3, torch.float64) if from_initial else random_state(m64.config, 3, seed=2, dtype=torch.float64)
    assert isinstance(state, ChannelState)
    ref_logits, ref_state = m64.forward_sequence(tokens, state, all_logits=True)
    logits, new_state = m32.forward_sequence(tokens, ChannelState(*(s.to(torch.float32) for s in state)), all_logits=True)
    assert logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in new_state)
    err = _rel(logits, ref_logits)
    assert err < TOL["float32"], f"float32 T={T}: logits rel error {err:.2e}"
    for name, a, b in zip(ChannelState._fields, new_state, ref_state):
        tol = 1e-4 if name == "pp" else TOL["float32"]
        err = _rel(a, b)
        assert err < tol, f"float32 T={T}: state {name} rel error {err:.2e}"


@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_dtypes_against_float64(version: str) -> None:
    # 13 layers so the float16 rescale (every 6 layers, v4-v6) happens twice.
    config, weights = random_weights(version, 13, 64, VOCAB, seed=2)
    tokens = _tokens(2, 33, seed=11)
    m64 = model_class(version)(config, weights, "float64")
    ref, _ = m64.forward_sequence(tokens, m64.initial_state(2), all_logits=True)
    for dtype in ("float32", "float16", "bfloat16"):
        model = model_class(version)(config, weights, dtype)
        logits, state = model.forward_sequence(tokens, model.initial_state(2), all_logits=True)
        assert logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in state), f"{dtype}: state must stay float32"
        err, tol = _rel(logits, ref), version_info(version).logits_rtol[dtype]
        agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        assert err < tol, f"RWKV-{version} {dtype}: logits rel error {err:.2e} > {tol}"
        assert agree >= 0.9, f"RWKV-{version} {dtype}: argmax agreement {agree:.2f}"


@pytest.mark.parametrize("version,rescaled", [("4", True), ("5.2", True), ("6", True), ("7", False)])
def test_float16_rescale(version: str, rescaled: bool) -> None:
    """float16 divides att.output / ffn.value of block i by 2^(i // 6) where the version rescales."""
    config, weights = random_weights(version, 13, 32, 20, seed=0)
    model = model_class(version)(config, weights, "float16")
    assert model.rescale_every == (6 if rescaled else 0) == version_info(version).float16_rescale_every
    for i in (0, 6, 12):
        for key in ("att.output.weight", "ffn.value.weight"):
            buffer = getattr(model.blocks[i], key.replace(".", "_"))
            ratio = (weights[f"blocks.{i}.{key}"].double() / buffer.double()).median().item()
            want = 2 ** (i // 6) if rescaled else 1
            assert abs(ratio - want) < 1e-2, f"RWKV-{version}: block {i} {key} scaled by {ratio}"
    assert model_class(version)(config, weights, "float32").rescale_every == 0


# --- errors ---------------------------------------------------------------------------------------


def test_token_ids_out_of_range() -> None:
    with pytest.raises(RwkvExportError, match="token id 71 is out of range.*vocab 71"):
        check_tokens(torch.tensor([[1, 71]]), 71)
    with pytest.raises(RwkvExportError, match="empty"):
        check_tokens(torch.tensor([[]], dtype=torch.long), 71)


@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_unknown_dtype(version: str) -> None:
    config, weights = random_weights(version, 1, 16, 10)
    with pytest.raises(RwkvExportError, match="unknown dtype 'int8'"):
        model_class(version)(config, weights, "int8")


# --- RWKV-4 trained weights -----------------------------------------------------------------------


@requires_shared
@pytest.mark.parametrize("precision,sum_tol", [("FP32", 1.05e-3), ("FP16", 0.013652)])
def test_tiny_trained_v4_matches_rwkvcpp_expected(precision: str, sum_tol: float) -> None:
    """rwkv.cpp's own test: fresh state, bytes of '"in', compare with its expected logits."""
    expected = np.fromfile(TINY / "expected-logits-4v0-660K.bin", dtype=np.float32)
    ckpt = load_checkpoint(tiny_model("4v0-660K", precision))
    for dtype in ("float64", "float32"):
        model = build_model(ckpt, dtype)
        state = initial_state(ckpt.config, 1, model.state_dtype)
        logits = model.forward_sequence(torch.tensor([[34, 105, 110]]), state)[0][0].double().numpy()
        diff = logits - expected
        assert abs(diff.sum()) <= sum_tol, f"{precision}/{dtype}: |sum diff| {abs(diff.sum()):.3g} > {sum_tol}"
        if precision == "FP32":
            assert np.abs(diff).max() < 1e-5, f"{dtype}: max abs {np.abs(diff).max():.2e}"
        assert logits.argmax() == expected.argmax()


@pytest.mark.parametrize("version", ["4", "5.1", "5.2", "6", "7"])
@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16, torch.float16])
def test_matrix_buffers_through_float32_equal_float64(version: str, source: torch.dtype) -> None:
    """RWKVModel.buffer converts a linear layer's matrix through float32 (the exporter streams large
    ones): bit for bit what the float64 route gives, float16 rescale included (every block halved
    at least once: rescale_every 1), and float32."""
    from rwkv_export.model import build_model
    from rwkv_export.model.base import buffer_name

    config, weights = random_weights(version, 3, 32, 40, seed=7, dtype=source)
    ckpt = Checkpoint(config, weights, "random", Path("random.pth"))
    checked = 0
    for dtype, rescale in (("float16", 1), ("float32", None)):
        model = build_model(ckpt, dtype, rescale_every=rescale)
        for key, tensor in weights.items():
            if key.startswith("blocks.") and key.endswith(".weight") and tensor.dim() == 2:
                layer = int(key.split(".")[1])
                wide = model.prepare(buffer_name(key), tensor.to(torch.float64), layer).contiguous()
                got = model.buffer(key, tensor, layer)
                assert got.dtype == wide.dtype and torch.equal(got, wide), (dtype, key)
                checked += 1
    assert checked >= 2 * 3 * 4
