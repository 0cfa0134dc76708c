"""RWKV-5.1, 5.2, 6 and 7 references: rwkv.cpp's tiny trained models, the `rwkv` package, long context.

Oracles: rwkv.cpp's expected logits for its tiny trained files (max abs within 1e-5 on FP32 files,
its own |sum| rule on FP16 files, argmax equal); the `rwkv` PyPI package (float32, its own process
per version family, v5 with its GroupNorm eps 64e-5) on random checkpoints and on the tiny files;
float64 self-consistency (prefill(T) == T steps, split prefills, batch rows independent) and dtypes
are checked for every version in tests/model/test_model.py.
Tolerances relative to the largest |logit| of the float64 run: float32 1e-5 (rwkv package: 2e-5, it
also rounds its weights path differently), float16 2e-2, bfloat16 8e-2 (as tests/model/test_model.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rwkv_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.errors import RwkvExportError
from rwkv_export.model import HeadState, RWKVModel, build_model, model_class
from rwkv_export.ops.wkv5 import wkv5, wkv5_numpy
from rwkv_export.ops.wkv6 import wkv6, wkv6_numpy
from rwkv_export.ops.wkv7 import wkv7, wkv7_numpy
from tests.conftest import TINY, requires_shared, tiny_model

VERSIONS = ["5.1", "5.2", "6", "7"]
TINY_STEMS = {"5.1": "5v1-730K", "5.2": "5v2-730K", "6": "6v0-1m", "7": "7v0-834K"}
FP16_SUM_TOL = {"5.1": 0.289921, "5.2": 0.455912, "6": 0.184410, "7": 0.005766}  # rwkv.cpp's rule (README)
PROMPT = [34, 105, 110]  # the bytes of '"in', rwkv.cpp's test prompt
TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 8e-2}
PACKAGE_TOL = 2e-5
RUNNER = Path(__file__).with_name("rwkv_package_runner.py")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(
    version: str, dtype: str = "float64", layers: int = 3, embd: int = 32, vocab: int = 61, seed: int = 0, **kwargs: Any
) -> RWKVModel:
    config, weights = random_weights(version, layers, embd, vocab, seed=seed)
    return model_class(version)(config, weights, dtype, **kwargs).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _tokens(batch: int, T: int, vocab: int = 61, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


# --- rwkv.cpp's tiny trained models -------------------------------------------------------------


@requires_shared
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
@pytest.mark.parametrize("version", VERSIONS)
def test_tiny_trained_matches_rwkvcpp_expected(version: str, precision: str) -> None:
    stem = TINY_STEMS[version]
    expected = np.fromfile(TINY / f"expected-logits-{stem}.bin", dtype=np.float32)
    ckpt = load_checkpoint(tiny_model(stem, precision))
    for dtype in ("float64", "float32", "float16"):
        model = build_model(ckpt, dtype)
        logits = model.forward_sequence(torch.tensor([PROMPT]), model.initial_state(1))[0][0].double().numpy()
        diff = logits - expected
        where = f"{stem} {precision} {dtype}"
        assert logits.argmax() == expected.argmax(), f"{where}: argmax {logits.argmax()} != {expected.argmax()}"
        if dtype == "float16":  # the low-precision path, checked against the float32 tolerance band
            assert np.abs(diff).max() < TOL["float16"] * np.abs(expected).max(), f"{where}: max abs {np.abs(diff).max():.2e}"
        elif precision == "FP32":
            assert np.abs(diff).max() < 1e-5, f"{where}: max abs {np.abs(diff).max():.2e}"
            assert abs(diff.sum()) <= 1.05e-3, f"{where}: |sum diff| {abs(diff.sum()):.3g}"
        else:
            assert abs(diff.sum()) <= FP16_SUM_TOL[version], f"{where}: |sum diff| {abs(diff.sum()):.3g} > {FP16_SUM_TOL[version]}"


@requires_shared
@pytest.mark.parametrize("version", ["5.1", "5.2"])
def test_tiny_v5_eps_is_the_checkpoints(version: str) -> None:
    """The rwkv.cpp v5 files need eps 1e-5 (their default); the package's 64e-5 moves logits by ~1."""
    ckpt = load_checkpoint(tiny_model(TINY_STEMS[version]))
    assert ckpt.config.group_norm_eps == 1e-5
    expected = np.fromfile(TINY / f"expected-logits-{TINY_STEMS[version]}.bin", dtype=np.float32)
    model = build_model(ckpt, "float64", group_norm_eps=64e-5)
    assert model.config.group_norm_eps == 64e-5
    logits = model.forward_sequence(torch.tensor([PROMPT]), model.initial_state(1))[0][0].numpy()
    assert np.abs(logits - expected).max() > 0.5, "eps override had no effect"


# --- long sequences ------------------------------------------------------------------------------
# (forms agree, dtypes and the float16 rescale, for every version: tests/model/test_model.py)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_long_context_stays_finite(version: str, dtype: str) -> None:
    """T = 1024 random tokens in one prefill: finite, close to float64; v7's state norm bounded."""
    config, weights = random_weights(version, 2, 32, 61, seed=9)
    tokens = _tokens(1, 1024, seed=9)
    m64 = model_class(version)(config, weights, "float64")
    ref, ref_state = m64.forward_sequence(tokens, m64.initial_state(1), all_logits=True)
    model = model_class(version)(config, weights, dtype)
    logits, state = model.forward_sequence(tokens, model.initial_state(1), all_logits=True)
    assert all(bool(torch.isfinite(t).all()) for t in (logits, *state)), f"RWKV-{version} {dtype}: non-finite at T=1024"
    err = _rel(logits[:, -256:], ref[:, -256:])
    assert err < (1e-4 if dtype == "float32" else 5e-2), f"RWKV-{version} {dtype}: late logits rel error {err:.2e}"
    if version == "7":
        # ||S|| per head: the delta rule keeps it O(max|v| * sqrt(N) / (1 - w)) rather than growing with T.
        norm = state.wkv.double().flatten(-2).norm(dim=-1).max().item()
        _, early = m64.forward_sequence(tokens[:, :256], m64.initial_state(1))
        early_norm = early.wkv.flatten(-2).norm(dim=-1).max().item()
        assert norm < 3 * early_norm, f"RWKV-7 {dtype}: state norm {norm:.3g} at T=1024 vs {early_norm:.3g} at T=256"
        assert (state.wkv.double() - ref_state.wkv).abs().max().item() < (1e-3 if dtype == "float32" else 0.5) * norm


# --- the WKV ops against their numpy references ---------------------------------------------------


def _wkv_inputs(seed: int, B: int = 2, T: int = 9, H: int = 3, N: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    kk = rng.normal(size=(B, T, H, N))
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    a = rng.uniform(0, 1, size=(B, T, H, N))
    return {
        "r": rng.normal(size=(B, T, H, N)), "k": rng.normal(size=(B, T, H, N)), "v": rng.normal(size=(B, T, H, N)),
        "w5": rng.uniform(-6, 1, size=(H, N)), "w6": rng.uniform(-6, 1, size=(B, T, H, N)),
        "w7": -np.log1p(np.exp(-rng.normal(-3, 2, size=(B, T, H, N)))) - 0.5, "u": rng.normal(size=(H, N)),
        "a": -kk, "b": kk * a, "s": rng.normal(size=(B, H, N, N)),
    }  # fmt: skip


@pytest.mark.parametrize("op", ["WKV5", "WKV6", "WKV7"])
def test_wkv_torch_matches_numpy(op: str) -> None:
    x = _wkv_inputs(seed=len(op))
    t = {k: torch.from_numpy(v) for k, v in x.items()}
    if op == "WKV5":
        y, s = wkv5(t["r"], t["k"], t["v"], t["w5"], t["u"], t["s"])
        y_ref, s_ref = wkv5_numpy(x["r"], x["k"], x["v"], x["w5"], x["u"], x["s"])
    elif op == "WKV6":
        y, s = wkv6(t["r"], t["k"], t["v"], t["w6"], t["u"], t["s"])
        y_ref, s_ref = wkv6_numpy(x["r"], x["k"], x["v"], x["w6"], x["u"], x["s"])
    else:
        y, s = wkv7(t["r"], t["w7"], t["k"], t["v"], t["a"], t["b"], t["s"])
        y_ref, s_ref = wkv7_numpy(x["r"], x["w7"], x["k"], x["v"], x["a"], x["b"], x["s"])
    assert y.shape == y_ref.shape and s.shape == s_ref.shape
    assert np.abs(y.numpy() - y_ref).max() < 1e-12 and np.abs(s.numpy() - s_ref).max() < 1e-12, f"{op}: torch != numpy"


def test_wkv5_is_wkv6_with_broadcast_decay() -> None:
    x = _wkv_inputs(seed=1)
    w6 = np.broadcast_to(x["w5"], x["k"].shape)
    y5, s5 = wkv5_numpy(x["r"], x["k"], x["v"], x["w5"], x["u"], x["s"])
    y6, s6 = wkv6_numpy(x["r"], x["k"], x["v"], w6, x["u"], x["s"])
    assert np.array_equal(y5, y6) and np.array_equal(s5, s6)


# --- overrides and errors -------------------------------------------------------------------------


def test_group_norm_eps_override_and_defaults() -> None:
    for version, eps in (("5.1", 1e-5), ("5.2", 64e-5), ("6", 64e-5), ("7", 64e-5)):
        assert _model(version).eps == eps, f"RWKV-{version}: default eps"
    config, weights = random_weights("5.2", 2, 32, 61)
    ckpt = Checkpoint(config, weights, "random", Path("m.pth"))
    a, b = build_model(ckpt, "float64"), build_model(ckpt, "float64", group_norm_eps=1e-5)
    assert b.config.group_norm_eps == 1e-5 and ckpt.config.group_norm_eps == 64e-5
    tokens = _tokens(1, 5)
    assert _rel(a.forward_sequence(tokens, a.initial_state(1))[0], b.forward_sequence(tokens, b.initial_state(1))[0]) > 1e-6
    with pytest.raises(RwkvExportError, match="group_norm_eps must be positive"):
        build_model(ckpt, "float64", group_norm_eps=0.0)


# --- the rwkv package -----------------------------------------------------------------------------

PACKAGE_BATCH, PACKAGE_T = 3, 512


def _run_package(groups: dict[bool, list[dict[str, Any]]], tmp: Path) -> None:
    """One process per version family (RWKV_V7_ON is read at import), both running at once."""
    procs = {}
    for v7, jobs in groups.items():
        jobs_file = tmp / f"jobs-{int(v7)}.json"
        jobs_file.write_text(json.dumps(jobs))
        env = {**os.environ, "RWKV_V7_ON": "1" if v7 else "0", "RWKV_JIT_ON": "0", "RWKV_CUDA_ON": "0", "OMP_NUM_THREADS": "1"}
        procs[v7] = subprocess.Popen(
            [sys.executable, str(RUNNER), str(jobs_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for v7, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"rwkv package runner failed (RWKV_V7_ON={int(v7)}): {err.strip()[-2000:]}"


@pytest.fixture(scope="module")
def package_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Checkpoint, list[list[int]], dict[str, np.ndarray]]]:
    pytest.importorskip("rwkv", reason="the `rwkv` package (test extra) is not installed")
    return package_results(tmp_path_factory.mktemp("rwkv-package"))


def package_results(tmp: Path) -> dict[str, tuple[Checkpoint, list[list[int]], dict[str, np.ndarray]]]:
    """Random checkpoints of each version (+ the tiny trained files), run by the package in two processes."""
    cases: dict[str, tuple[Checkpoint, list[list[int]]]] = {}
    for n, version in enumerate(VERSIONS):
        config, weights = random_weights(version, 3, 32, 61, seed=10 + n)
        seqs = _tokens(PACKAGE_BATCH, PACKAGE_T, seed=n).tolist() + [[7]]
        cases[version] = (Checkpoint(config, weights, "random", tmp / f"v{version}.pth"), seqs)
    config, weights = random_weights("6", 2, 32, 61, seed=20)
    g = torch.Generator().manual_seed(21)
    for i in range(2):
        weights[f"blocks.{i}.att.time_state"] = torch.randn(4, 8, 8, generator=g)
    cases["6+time_state"] = (Checkpoint(config, weights, "random", tmp / "v6-time-state.pth"), [list(range(20))])
    if TINY.is_dir():
        for stem in TINY_STEMS.values():
            cases[f"tiny {stem}"] = (load_checkpoint(tiny_model(stem)), [PROMPT + list(b" the quick brown fox")])
    jobs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for name, (ckpt, seqs) in cases.items():
        pth = tmp / (name.replace(" ", "-").replace("+", "-") + ".pth")
        save_checkpoint(Checkpoint(ckpt.config, {k: v.float() for k, v in ckpt.weights.items()}, ckpt.format, pth), pth)
        jobs[ckpt.config.version == "7"].append({"pth": str(pth), "seqs": seqs, "out": str(pth.with_suffix(".npz"))})
    _run_package(jobs, tmp)
    out = {}
    for name, (ckpt, seqs) in cases.items():
        pth = tmp / (name.replace(" ", "-").replace("+", "-") + ".npz")
        out[name] = (ckpt, seqs, dict(np.load(pth)))
    return out


def _compare_with_package(name: str, ckpt: Checkpoint, seqs: list[list[int]], got: dict[str, np.ndarray]) -> float:
    # The package normalises ln_x with eps 64e-5 for every version: run the reference with it.
    model = build_model(
        Checkpoint(ckpt.config, {k: v.float() for k, v in ckpt.weights.items()}, ckpt.format, ckpt.path), "float64", group_norm_eps=64e-5
    )
    worst = 0.0
    for length in sorted({len(s) for s in seqs}):
        rows = [i for i, s in enumerate(seqs) if len(s) == length]
        logits, state = model.forward_sequence(torch.tensor([seqs[i] for i in rows]), model.initial_state(len(rows)))
        for j, i in enumerate(rows):
            ref = logits[j].numpy()
            err = np.abs(got[f"logits_{i}"] - ref).max() / np.abs(ref).max()
            worst = max(worst, float(np.abs(got[f"logits_{i}"] - ref).max() / np.abs(ref).max()))
            assert err < PACKAGE_TOL, f"rwkv package, {name}, row {i} (T={length}): logits rel error {err:.2e}"
            assert got[f"logits_{i}"].argmax() == ref.argmax(), f"rwkv package, {name}, row {i}: argmax differs"
            for field in HeadState._fields:
                a, b = got[f"{field}_{i}"], getattr(state, field)[:, j].numpy()
                serr = np.abs(a - b).max() / max(np.abs(b).max(), 1.0)
                assert serr < 1e-4, f"rwkv package, {name}, row {i}: state {field} rel error {serr:.2e}"
    return worst


@pytest.mark.parametrize("version", VERSIONS + ["6+time_state"])
def test_rwkv_package_random(package_runs: dict[str, Any], version: str) -> None:
    _compare_with_package(f"random RWKV-{version}", *package_runs[version])


@requires_shared
@pytest.mark.parametrize("version", VERSIONS)
def test_rwkv_package_tiny_trained(package_runs: dict[str, Any], version: str) -> None:
    _compare_with_package(f"tiny {TINY_STEMS[version]}", *package_runs[f"tiny {TINY_STEMS[version]}"])
