"""Seeded inputs of every WKV op, the float64 oracle and error metrics: shared by the kernel tests
(g++ CPU proof, GPU), the ONNX-body tests and the benchmarks.

`make_case(op, sizes, seed=, state=)` gives float32 inputs by name in the op's input order, as the
models feed the ops:
- WKV4 (sizes B, T, C): a quarter of the channels with |k| ~ 60 (`extreme`), so exp(k) overflows
  float32 unless the running-max form is right; state 'zero' or 'warm' (after a random 37-token
  prefix, by the oracle). Its state (aa, bb, pp) is not unique: (aa*e^d, bb*e^d, pp-d) is the same
  state, and two correct implementations may round pp differently (the chunked kernel decays by L*w
  once where the reference subtracts w L times), so `wkv4_errors` compares aa, bb after rescaling to
  the oracle's pp.
- WKV5/6/7 (sizes B, T, H, N): WKV5/6 decays spread from fast (w ~ 0) to very slow (w ~ 1 - 3e-4,
  w_raw down to -8), |k| scaled like a trained model's; WKV7 in its stable regime: kk unit-norm per
  head, a = -kk, b = kk * sigmoid(...), w_raw <= -0.5 (w in (0.5452, 1)).
"""

from __future__ import annotations

import numpy as np

from rwkv_export.ops.registry import OPS
from rwkv_export.ops.wkv4 import PP_INIT, wkv4_numpy

HEAD_OPS = tuple(name for name, spec in OPS.items() if spec.kernel.head_sizes)  # WKV5, WKV6, WKV7


def make_case(op: str, sizes: tuple[int, ...], *, seed: int, state: str = "zero", **options: object) -> dict[str, np.ndarray]:
    """float32 inputs of `op` by name, in the op's input order (see the module docstring)."""
    if op == "WKV4":
        return _wkv4_case(*sizes, seed=seed, state=state, **options)  # type: ignore[arg-type]
    return _head_case(op, *sizes, seed=seed, state=state)


def as_read(op: str, case: dict[str, np.ndarray], io: str) -> dict[str, np.ndarray]:
    """The inputs as a kernel reads them: the op's IO inputs rounded to fp16 for f16 I/O."""
    if io == "f32":
        return case
    io_names = OPS[op].kernel.io_inputs
    return {n: a.astype(np.float16).astype(np.float32) if n in io_names else a for n, a in case.items()}


def run_numpy(op: str, case: dict[str, np.ndarray], dtype: type = np.float64) -> tuple[np.ndarray, ...]:
    """The op's numpy oracle (float64 by default; IO inputs upcast from whatever dtype was read)."""
    return OPS[op].oracle(*(np.asarray(a, np.float64) for a in case.values()), dtype=dtype)


def _wkv4_case(B: int, T: int, C: int, *, seed: int, state: str = "zero", k_scale: float = 1.0, extreme: bool = True):
    """float32 inputs (time_decay, time_first, k, v, aa, bb, pp). extreme: a quarter of the channels get |k| ~ 60,
    so exp(k) overflows float32 unless the running-max form is right. state: 'zero' (aa = bb = 0,
    pp = PP_INIT) or 'warm' (the state after a random 37-token prefix, computed by the oracle)."""
    rng = np.random.default_rng(seed)
    td = rng.uniform(-5.0, 1.5, C).astype(np.float32)  # w = exp(td) in [0.007, 4.5]
    tf = rng.normal(0.0, 1.0, C).astype(np.float32)
    k = (rng.normal(0.0, 1.0, (B, T, C)) * k_scale).astype(np.float32)
    v = rng.normal(0.0, 1.0, (B, T, C)).astype(np.float32)
    if extreme:
        hot = rng.random(C) < 0.25
        k[:, :, hot] = rng.uniform(-60.0, 60.0, (B, T, int(hot.sum()))).astype(np.float32)
    aa = np.zeros((B, C), np.float32)
    bb = np.zeros((B, C), np.float32)
    pp = np.full((B, C), PP_INIT, np.float32)
    if state == "warm":
        kp = rng.uniform(-60.0, 60.0, (B, 37, C)).astype(np.float32)
        vp = rng.normal(0.0, 1.0, (B, 37, C)).astype(np.float32)
        _, aa, bb, pp = (x.astype(np.float32) for x in wkv4_numpy(td, tf, kp, vp, aa, bb, pp))
    elif state != "zero":
        raise ValueError(state)
    return dict(zip(OPS["WKV4"].inputs, (td, tf, k, v, aa, bb, pp)))


def wkv4_errors(got, ref, v) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Max errors of (y, aa, bb, pp) `got` against the float64 oracle `ref`.

    y_abs:  max |y - y_ref|;  y_rel: that over max(|y_ref|, 1) per element (y is a weighted mean
    of v ~ N(0, 1), so 1 is its natural scale). pp_abs / pp_rel. aa, bb rescaled to the oracle's
    pp: bb_rel = |bb' - bb_ref| / bb_ref; aa_rel = |aa' - aa_ref| / (bb_ref * max|v|)."""
    y, aa, bb, pp = (np.asarray(x, np.float64) for x in got)
    y_ref, aa_ref, bb_ref, pp_ref = (np.asarray(x, np.float64) for x in ref)
    out = {}
    dy = np.abs(y - y_ref)
    out["y_abs"] = float(dy.max(initial=0.0))
    out["y_rel"] = float((dy / np.maximum(np.abs(y_ref), 1.0)).max(initial=0.0))
    out["pp_abs"] = float(np.abs(pp - pp_ref).max(initial=0.0))
    out["pp_rel"] = float((np.abs(pp - pp_ref) / np.maximum(np.abs(pp_ref), 1.0)).max(initial=0.0))
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.exp(np.clip(pp - pp_ref, -80, 80))
    live = bb_ref > 0  # bb_ref == 0 only for an untouched zero state (T == 0)
    vmax = max(float(np.abs(v).max(initial=0.0)), 1.0)
    bb_err = np.abs(bb * scale - bb_ref)
    aa_err = np.abs(aa * scale - aa_ref)
    out["bb_rel"] = float((bb_err[live] / bb_ref[live]).max(initial=0.0))
    out["aa_rel"] = float((aa_err[live] / (bb_ref[live] * vmax)).max(initial=0.0))
    if (~live).any():  # untouched zero state: must stay exactly zero
        out["bb_rel"] = max(out["bb_rel"], float(np.abs(bb[~live]).max()))
        out["aa_rel"] = max(out["aa_rel"], float(np.abs(aa[~live]).max()))
    out["finite"] = float(all(np.isfinite(x).all() for x in (y, aa, bb, pp)))
    return out


def oracle(td, tf, k, v, aa, bb, pp):  # type: ignore[no-untyped-def]
    """WKV4's float64 reference on a tuple case (k, v upcast from whatever dtype the kernel read)."""
    return wkv4_numpy(td, tf, np.asarray(k, np.float64), np.asarray(v, np.float64), aa, bb, pp)


WKV4_METRICS = ("y_abs", "y_rel", "pp_abs", "bb_rel", "aa_rel")
F16_Y = 2.0**-11  # one fp16 rounding of y, relative to max(|y|, 1)


def wkv4_as_read(case, io: str):  # type: ignore[no-untyped-def]
    """A WKV4 tuple case as the kernel reads it (k, v rounded to fp16 for f16 I/O)."""
    if io == "f32":
        return case
    td, tf, k, v, aa, bb, pp = case
    return (td, tf, k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32), aa, bb, pp)


def assert_wkv4_close(got, case, io: str, label: str, ref=None, base=None, target: float | None = None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """WKV4 outputs against the float64 oracle: no worse than 2x numpy's own float32 run + 1e-5, plus
    one fp16 rounding of y for f16 I/O; `target`: an absolute bound on y_rel where float32 reaches it.
    ref / base: the oracle's outputs and numpy float32's errors, when the caller caches them."""
    ref = oracle(*case) if ref is None else ref
    base = wkv4_errors(wkv4_numpy(*case, dtype=np.float32), ref, case[3]) if base is None else base
    err = wkv4_errors(got, ref, case[3])
    assert err["finite"] == 1.0, f"{label}: non-finite output"
    y_scale = max(1.0, float(np.abs(ref[0]).max(initial=0.0)))
    f16_y = {"y_abs": F16_Y * y_scale, "y_rel": F16_Y} if io == "f16" else {}
    for m in WKV4_METRICS:
        bound = 2.0 * base[m] + 1e-5 + f16_y.get(m, 0.0)
        assert err[m] <= bound, f"{label}: {m} = {err[m]:.3e} > {bound:.3e} (numpy float32: {base[m]:.3e})"
    if target is not None:
        y_target = target + (F16_Y if io == "f16" else 0.0)
        assert err["y_rel"] <= y_target, f"{label}: y_rel = {err['y_rel']:.3e} > {y_target:.1e}"
    return err


def _head_case(op: str, B: int, T: int, H: int, N: int, *, seed: int, state: str = "zero") -> dict[str, np.ndarray]:
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
    return {name: np.ascontiguousarray(x[name], np.float32) for name in OPS[op].inputs}


def head_errors(got: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Max abs error of y and of the state, each relative to max(1, max |reference|); finite flag."""
    out = {"finite": float(all(np.isfinite(g).all() for g in got))}
    for name, g, r in zip(("y", "state"), got, ref):
        out[name] = float(np.abs(np.asarray(g, np.float64) - r).max(initial=0.0) / max(1.0, float(np.abs(r).max(initial=0.0))))
    return out


def assert_close(op: str, got, case_read: dict[str, np.ndarray], label: str) -> dict[str, float]:
    """Against the float64 oracle: no worse than 2x numpy's own float32 run of the op + 1e-5."""
    ref = run_numpy(op, case_read)
    err = head_errors(got, ref)
    base = head_errors(run_numpy(op, case_read, np.float32), ref)
    assert err["finite"] == 1.0, f"{label}: non-finite output"
    for m in ("y", "state"):
        bound = 2.0 * base[m] + 1e-5
        assert err[m] <= bound, f"{label}: {m} error {err[m]:.3e} > {bound:.3e} (numpy float32: {base[m]:.3e})"
    return err


def onnx_inputs(op: str, B: int, T: int, H: int, N: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 inputs of plausible size for `op` (tests and benches).

    w_raw in [-3, 1] (decays from ~0.95 to ~0.07); WKV7's a = -kk and b = kk * sigma(.) with kk a
    unit vector per head, as the model calls it (the state stays bounded over long T).
    """
    rng = np.random.default_rng(seed)

    def f(*shape: int) -> np.ndarray:
        return np.asarray(rng.standard_normal(shape), np.float32)

    x = {n: f(B, T, H, N) for n in ("r", "k", "v")}
    state = (f(B, H, N, N) * 0.5).astype(np.float32)
    if op == "WKV7":
        kk = f(B, T, H, N)
        kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
        gate = 1 / (1 + np.exp(-f(B, T, H, N)))
        w_raw = (-np.log1p(np.exp(-f(B, T, H, N))) - 0.5).astype(np.float32)
        return {
            "r": x["r"],
            "w_raw": w_raw,
            "k": x["k"] * 0.5,
            "v": x["v"],
            "a": -kk,
            "b": (kk * gate).astype(np.float32),
            "state_in": state,
        }
    w_shape = (H, N) if op == "WKV5" else (B, T, H, N)
    w_raw = rng.uniform(-3, 1, w_shape).astype(np.float32)
    return {**x, "w_raw": w_raw, "u": f(H, N), "state_in": state}
