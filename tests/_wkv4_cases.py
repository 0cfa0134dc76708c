"""Seeded WKV4 inputs and representation-aware error metrics, shared by the kernel tests.

The state (aa, bb, pp) is not unique: (aa*e^d, bb*e^d, pp-d) is the same state. Two correct
implementations may round pp differently (the chunked kernel decays by L*w once where the
reference subtracts w L times), so aa, bb are compared after rescaling to the oracle's pp.
"""

from __future__ import annotations

import numpy as np

from rwkv_export.ops.wkv4 import PP_INIT, wkv4_numpy


def make_case(B: int, T: int, C: int, *, seed: int, state: str = "zero", k_scale: float = 1.0, extreme: bool = True):
    """float32 inputs (td, tf, k, v, aa, bb, pp). extreme: a quarter of the channels get |k| ~ 60,
    so exp(k) overflows float32 unless the running-max form is right. state: 'zero' (aa = bb = 0,
    pp = PP_INIT) or 'warm' (the state after a random 37-token prefix, computed by the oracle)."""
    rng = np.random.default_rng(seed)
    td = rng.uniform(-5.0, 1.5, C).astype(np.float32)          # w = exp(td) in [0.007, 4.5]
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
    return td, tf, k, v, aa, bb, pp


def wkv4_errors(got, ref, v) -> dict[str, float]:
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


def oracle(td, tf, k, v, aa, bb, pp):
    """The float64 reference (k, v upcast from whatever dtype the kernel read)."""
    return wkv4_numpy(td, tf, np.asarray(k, np.float64), np.asarray(v, np.float64), aa, bb, pp)
