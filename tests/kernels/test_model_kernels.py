"""Whole models with their WKV calls routed through the project's kernels (plugins/torch_cuda.py
`use_kernels`): on a GPU the CUDA kernels of plugins/wkv4.cu and plugins/wkv_heads.cu run inside
the reference model, checked against the float64 CPU reference and rwkv.cpp's expected logits of
the tiny trained models. On the CPU the same plumbing runs the ops' reference path (signatures,
dtypes and state layout are what the model expects).

Tolerances relative to the largest |logit| of the float64 run: float32 1e-5, float16 2e-2 (as
tests/model/test_model.py); rwkv.cpp's expected logits: max abs 1e-5 on FP32 files, argmax equal.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.model import build_model
from tests.conftest import TINY, requires_shared, tiny_model

STEMS = ["4v0-660K", "5v1-730K", "5v2-730K", "6v0-1m", "7v0-834K"]
PROMPT = [34, 105, 110]  # '"in': rwkv.cpp's prompt for its expected logits
TOL = {"float32": 1e-5, "float16": 2e-2}
HAVE_GPU = (
    torch.cuda.is_available() and importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None
)


def _to(state, device: str):  # type: ignore[no-untyped-def]
    return type(state)(*(t.to(device) for t in state))


def _run(model, tokens: torch.Tensor, device: str, steps: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Prefill logits of `tokens` [1, T], then one logit row per token of `steps` [S] (float64 numpy)."""
    with torch.no_grad():
        logits, state = model.forward_sequence(tokens.to(device), _to(model.initial_state(tokens.shape[0]), device))
        rows = []
        for tok in steps:
            step_logits, state = model.forward_step(tok.view(1).to(device), state)
            rows.append(step_logits[0])
    stepped = torch.stack(rows).double().cpu().numpy() if rows else np.zeros((0,))
    return logits[0].double().cpu().numpy(), stepped


def _check(stem: str, device: str, dtype: str) -> dict[str, float]:
    from rwkv_export.kernels.torch_cuda import use_kernels

    ckpt = load_checkpoint(tiny_model(stem))
    g = torch.Generator().manual_seed(0)
    tokens, steps = torch.randint(0, 256, (1, 64), generator=g), torch.randint(0, 256, (8,), generator=g)
    ref_pre, ref_steps = _run(build_model(ckpt, "float64"), tokens, "cpu", steps)
    model = use_kernels(build_model(ckpt, dtype).to(device))
    pre, stepped = _run(model, tokens, device, steps)
    scale = np.abs(ref_pre).max()
    out = {"prefill_rel": float(np.abs(pre - ref_pre).max() / scale), "step_rel": float(np.abs(stepped - ref_steps).max() / scale)}
    assert pre.argmax() == ref_pre.argmax() and (stepped.argmax(-1) == ref_steps.argmax(-1)).all(), (
        f"{stem} {device} {dtype}: argmax differs"
    )
    for name, err in out.items():
        assert err < TOL[dtype], f"{stem} {device} {dtype}: {name} {err:.2e} > {TOL[dtype]}"
    if dtype == "float32":
        expected = np.fromfile(TINY / f"expected-logits-{stem}.bin", dtype=np.float32)
        got, _ = _run(model, torch.tensor([PROMPT]), device, torch.tensor([], dtype=torch.long))
        out["rwkvcpp_abs"] = float(np.abs(got - expected).max())
        assert out["rwkvcpp_abs"] < 1e-5 and got.argmax() == expected.argmax(), f"{stem}: vs rwkv.cpp {out['rwkvcpp_abs']:.2e}"
    return out


@requires_shared
@pytest.mark.parametrize("stem", ["4v0-660K", "6v0-1m", "7v0-834K"])
def test_kernel_ops_plumbing_on_cpu(stem: str) -> None:
    _check(stem, "cpu", "float32")


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_GPU, reason="no CUDA GPU (or cuda-bindings) for the kernels")
@requires_shared
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("stem", STEMS)
def test_tiny_trained_models_on_gpu_kernels(stem: str, dtype: str) -> None:
    errs = _check(stem, "cuda", dtype)
    print(f"MODEL {stem} cuda {dtype}: " + " ".join(f"{k} {v:.2e}" for k, v in errs.items()))
