"""Reference model: the two forms agree, dtypes stay within stated tolerances, real weights match rwkv.cpp.

Tolerances (relative to the largest |logit| of the float64 run):
- float32: 1e-5 (24-bit mantissa; errors of a few ulp per op over a few layers);
- float16: 2e-2 with rescale (11-bit mantissa, eps ~1e-3, accumulated over ~10 roundings per layer
  and fp16 matmul accumulation);
- bfloat16: 8e-2 (8-bit mantissa, eps ~8e-3: the same accumulation with 8x coarser rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.errors import RwkvExportError
from rwkv_export.model import RWKV4, ChannelState, build_model, check_tokens, initial_state, random_state
from tests.conftest import TINY, requires_shared, tiny_model

TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 8e-2}


def _model(dtype: str, layers: int = 3, embd: int = 48, vocab: int = 71, seed: int = 0) -> RWKV4:
    config, weights = random_weights("4", layers, embd, vocab, seed=seed)
    return RWKV4(config, weights, dtype).eval()


def _cast(state: ChannelState, dtype: torch.dtype) -> ChannelState:
    return ChannelState(*(s.to(dtype) for s in state))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("T", [1, 7, 64, 1024])
def test_sequence_equals_steps_float64(T: int) -> None:
    model = _model("float64", layers=2, embd=32)
    tokens = torch.randint(0, 71, (2, T), generator=torch.Generator().manual_seed(T))
    state0 = random_state(model.config, 2, seed=1, dtype=torch.float64)
    logits_seq, state_seq = model.forward_sequence(tokens, state0, all_logits=True)
    state = state0
    for t in range(T):
        logits, state = model.forward_step(tokens[:, t], state)
        if t in (0, T - 1):
            diff = (logits - logits_seq[:, t]).abs().max().item()
            assert diff < 1e-12, f"T={T} t={t}: step vs sequence logits differ by {diff}"
    for name, a, b in zip(ChannelState._fields, state, state_seq):
        diff = (a - b).abs().max().item()
        assert diff < 1e-11 * max(1.0, b.abs().max().item()), f"T={T}: state {name} differs by {diff}"


@pytest.mark.parametrize("T", [1, 64, 1024])
@pytest.mark.parametrize("from_initial", [True, False])
def test_float32_matches_float64(T: int, from_initial: bool) -> None:
    m64, m32 = _model("float64"), _model("float32")
    tokens = torch.randint(0, 71, (3, T), generator=torch.Generator().manual_seed(7))
    state = initial_state(m64.config, 3, torch.float64) if from_initial else random_state(m64.config, 3, seed=2, dtype=torch.float64)
    ref_logits, ref_state = m64.forward_sequence(tokens, state, all_logits=True)
    logits, new_state = m32.forward_sequence(tokens, _cast(state, torch.float32), all_logits=True)
    assert logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in new_state)
    err = _rel(logits, ref_logits)
    assert err < TOL["float32"], f"float32 T={T}: logits rel error {err:.2e}"
    for name, a, b in zip(ChannelState._fields, new_state, ref_state):
        tol = 1e-4 if name == "pp" else TOL["float32"]  # pp is a log-scale max: compare relative to its size
        err = _rel(a, b)
        assert err < tol, f"float32 T={T}: state {name} rel error {err:.2e}"


def test_batch_rows_are_independent() -> None:
    model = _model("float64")
    tokens = torch.randint(0, 71, (4, 19), generator=torch.Generator().manual_seed(3))
    state = random_state(model.config, 4, seed=4, dtype=torch.float64)
    batch_logits, batch_state = model.forward_sequence(tokens, state)
    for b in range(4):
        row_state = ChannelState(*(s[:, b : b + 1] for s in state))
        logits, new = model.forward_sequence(tokens[b : b + 1], row_state)
        assert (logits[0] - batch_logits[b]).abs().max().item() < 1e-12, f"row {b} depends on other rows"
        assert (new.aa[:, 0] - batch_state.aa[:, b]).abs().max().item() < 1e-12


def test_split_sequence_continues() -> None:
    model = _model("float64")
    tokens = torch.randint(0, 71, (2, 40), generator=torch.Generator().manual_seed(5))
    state = initial_state(model.config, 2, torch.float64)
    whole, whole_state = model.forward_sequence(tokens, state)
    _, mid = model.forward_sequence(tokens[:, :17], state)
    part, part_state = model.forward_sequence(tokens[:, 17:], mid)
    assert (whole - part).abs().max().item() < 1e-12
    assert max((a - b).abs().max().item() for a, b in zip(whole_state, part_state)) < 1e-10


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_against_float32(dtype: str) -> None:
    # 13 layers so the float16 rescale (every 6 layers) happens twice.
    m32, mlo = _model("float32", layers=13, embd=64), _model(dtype, layers=13, embd=64)
    tokens = torch.randint(0, 71, (2, 33), generator=torch.Generator().manual_seed(11))
    state = initial_state(m32.config, 2)
    ref, _ = m32.forward_sequence(tokens, state, all_logits=True)
    logits, new_state = mlo.forward_sequence(tokens, state, all_logits=True)
    assert all(s.dtype == torch.float32 for s in new_state), "state must stay float32"
    err = _rel(logits, ref)
    agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert err < TOL[dtype], f"{dtype}: logits rel error {err:.2e} > {TOL[dtype]}"
    assert agree >= 0.9, f"{dtype}: argmax agreement {agree:.2f}"


def test_float16_rescale_is_applied() -> None:
    config, weights = random_weights("4", 13, 32, 20, seed=0)
    m = RWKV4(config, weights, "float16")
    assert m.rescale_every == 6
    for i in (0, 6, 12):
        ratio = (weights[f"blocks.{i}.att.output.weight"].double() / m.blocks[i].att_output_weight.double()).median().item()
        assert abs(ratio - 2 ** (i // 6)) < 1e-2, f"block {i}: output weight scaled by {ratio}"
    assert RWKV4(config, weights, "float32").rescale_every == 0


def test_token_ids_out_of_range() -> None:
    with pytest.raises(RwkvExportError, match="token id 71 is out of range.*vocab 71"):
        check_tokens(torch.tensor([[1, 71]]), 71)
    with pytest.raises(RwkvExportError, match="empty"):
        check_tokens(torch.tensor([[]], dtype=torch.long), 71)


def test_unknown_dtype() -> None:
    config, weights = random_weights("4", 1, 8, 10)
    with pytest.raises(RwkvExportError, match="unknown dtype 'int8'"):
        RWKV4(config, weights, "int8")


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
