"""Inputs for the WKV5/6/7 kernel checks (CPU proof and GPU), the float64 oracle and error metrics.

Inputs follow what the models feed the ops: WKV5/6 decays spread from fast (w ~ 0) to very slow
(w ~ 1 - 3e-4, w_raw down to -8), |k| scaled like a trained model's; WKV7 in its stable regime:
kk unit-norm per head, a = -kk, b = kk * sigmoid(...), w_raw <= -0.5 (w in (0.5452, 1)).
"""

from __future__ import annotations

import numpy as np

from rwkv_export.ops import MATRIX_OPS

OPS = MATRIX_OPS
IO_NAMES = ("r", "k", "v", "a", "b")


def make_case(op: str, B: int, T: int, H: int, N: int, *, seed: int, state: str = "zero") -> dict[str, np.ndarray]:
    """float32 inputs of `op` by name, in the op's INPUTS order."""
    g = np.random.default_rng(seed)
    shape = (B, T, H, N)
    x: dict[str, np.ndarray] = {"r": g.standard_normal(shape), "k": 0.5 * g.standard_normal(shape), "v": g.standard_normal(shape)}
    if op == "WKV7":
        kk = g.standard_normal(shape)
        kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
        x["a"], x["b"] = -kk, kk / (1.0 + np.exp(-g.standard_normal(shape)))
        x["w_raw"] = -np.logaddexp(0.0, -2.0 * g.standard_normal(shape)) - 0.5  # -softplus(-z) - 0.5
    else:
        w_shape = (H, N) if op == "WKV5" else shape
        x["w_raw"] = g.uniform(-8.0, 1.0, w_shape)
        x["u"] = 0.5 * g.standard_normal((H, N))
    x["state_in"] = np.zeros((B, H, N, N)) if state == "zero" else 0.3 * g.standard_normal((B, H, N, N))
    return {name: np.ascontiguousarray(x[name], np.float32) for name in OPS[op].INPUTS}


def as_read(case: dict[str, np.ndarray], io: str) -> dict[str, np.ndarray]:
    """The inputs as a kernel reads them: r, k, v (, a, b) rounded to fp16 for f16 I/O."""
    if io == "f32":
        return case
    return {n: a.astype(np.float16).astype(np.float32) if n in IO_NAMES else a for n, a in case.items()}


def run_numpy(op: str, case: dict[str, np.ndarray], dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    return getattr(OPS[op], f"{op.lower()}_numpy")(*case.values(), dtype=dtype)


def errors(got: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Max abs error of y and of the state, each relative to max(1, max |reference|); finite flag."""
    out = {"finite": float(all(np.isfinite(g).all() for g in got))}
    for name, g, r in zip(("y", "state"), got, ref):
        out[name] = float(np.abs(np.asarray(g, np.float64) - r).max(initial=0.0) / max(1.0, float(np.abs(r).max(initial=0.0))))
    return out


def assert_close(op: str, got, case_read: dict[str, np.ndarray], label: str) -> dict[str, float]:
    """Against the float64 oracle: no worse than 2x numpy's own float32 run of the op + 1e-5."""
    ref = run_numpy(op, case_read)
    err = errors(got, ref)
    base = errors(run_numpy(op, case_read, np.float32), ref)
    assert err["finite"] == 1.0, f"{label}: non-finite output"
    for m in ("y", "state"):
        bound = 2.0 * base[m] + 1e-5
        assert err[m] <= bound, f"{label}: {m} error {err[m]:.3e} > {bound:.3e} (numpy float32: {base[m]:.3e})"
    return err
