"""Judge each backend's trace against the oracle's, and report: a table for people, JSON for machines.

A backend fails when any logits or any state tensor of any layer, at any scenario point, is beyond
its dtype's tolerance. The failure names the first place it diverges: the earliest point, then the
lowest layer, then the first state tensor in computation order (x_att, aa, bb, pp, x_ffn): errors
flow forward through layers and steps, so that is where they start.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rwkv_export.parity.compare import LogitsMetrics, TensorMetrics, greedy_match_length, logits_metrics, per_layer_error, tensor_metrics
from rwkv_export.parity.guarantees import NAMES as GUARANTEES
from rwkv_export.parity.guarantees import GuaranteeResult
from rwkv_export.parity.scenario import Trace
from rwkv_export.parity.tolerances import Tolerance


@dataclass
class PointResult:
    label: str
    logits: LogitsMetrics | None
    state: dict[str, TensorMetrics]
    failures: list[str]  # readable, in order of where they arise
    budget: float = 0.0  # worst max|diff| / allowed over logits and every state layer: > 1 fails


@dataclass
class BackendResult:
    name: str
    dtype: str
    status: str  # "pass" | "fail" | "skipped" | "error"
    reason: str = ""  # skip reason, error message, or first divergence
    tolerance: Tolerance | None = None
    points: list[PointResult] = field(default_factory=list)
    greedy_match: int = 0
    greedy_total: int = 0
    seconds: float = 0.0
    guarantees: list[GuaranteeResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error")


def _comparable(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """The reference's logits in got's layout: an export without --all-logits has only the last position."""
    return ref[:, -1] if ref.ndim == 3 and got.ndim == 2 else ref


def assess_point(
    label: str, ref_logits: np.ndarray, ref_state: dict[str, np.ndarray], logits: np.ndarray, state: dict[str, np.ndarray], tol: Tolerance
) -> PointResult:
    result = PointResult(label, None, {}, [])
    ref_logits = _comparable(ref_logits, logits)
    if ref_logits.shape != logits.shape:
        result.failures.append(f"logits shape {list(logits.shape)}, expected {list(ref_logits.shape)}")
    else:
        result.logits = logits_metrics(ref_logits, logits)
    by_layer: list[tuple[int, int, str]] = []  # (layer, order, message)
    for order, (name, ref) in enumerate(ref_state.items()):
        got = state.get(name)
        if got is None or got.shape != ref.shape:
            found = "missing" if got is None else f"shape {list(got.shape)}"
            by_layer.append((-1, order, f"state '{name}' {found}, expected {list(ref.shape)}"))
            continue
        result.state[name] = tensor_metrics(ref, got)
        max_abs, scale = per_layer_error(ref, got)
        for layer in range(ref.shape[0]):
            limit = tol.state_atol + tol.state_rtol * scale[layer]
            result.budget = max(result.budget, _ratio(max_abs[layer], limit))
            if not tol.allows(max_abs[layer], scale[layer], state=True):
                by_layer.append((layer, order, f"state '{name}' layer {layer}: max |diff| {max_abs[layer]:.3g} > tolerance {limit:.3g}"))
    result.failures += [message for _, _, message in sorted(by_layer)]
    if result.logits is not None:
        err = result.logits.error
        limit = tol.logits_atol + tol.logits_rtol * err.scale
        result.budget = max(result.budget, _ratio(err.max_abs, limit))
        if not tol.allows(err.max_abs, err.scale, state=False):
            result.failures.append(f"logits: max |diff| {err.max_abs:.3g} > tolerance {limit:.3g} (normalised error {err.normalized:.3g})")
    return result


def _ratio(error: float, limit: float) -> float:
    return error / limit if limit > 0 else (0.0 if error == 0 else math.inf)


def assess(name: str, dtype: str, reference: Trace, trace: Trace, tol: Tolerance) -> BackendResult:
    result = BackendResult(name, dtype, "pass", tolerance=tol)
    for ref, got in zip(reference.points, trace.points):
        result.points.append(assess_point(ref.label, ref.logits, ref.state, got.logits, got.state, tol))
    result.greedy_total = reference.greedy_tokens.shape[1]
    result.greedy_match = greedy_match_length(reference.greedy_tokens, trace.greedy_tokens)
    first = next((p for p in result.points if p.failures), None)
    if first is not None:
        result.status = "fail"
        more = f" (and {len(first.failures) - 1} more there)" if len(first.failures) > 1 else ""
        result.reason = f"first diverges at {first.label}: {first.failures[0]}{more}"
    return result


def add_guarantees(result: BackendResult, guarantees: list[GuaranteeResult]) -> BackendResult:
    """Attach the serving guarantees; a broken one fails the backend (after any parity failure)."""
    result.guarantees = guarantees
    broken = [g for g in guarantees if not g.passed]
    if broken and result.status == "pass":
        g = broken[0]
        what = f"{g.used:.0%} of the state tolerance" if g.greedy_identical else "greedy tokens differ"
        result.status, result.reason = "fail", f"guarantee '{g.name}' broken at {g.detail} ({what}, error {g.error:.3g})"
    return result


# --- summaries ----------------------------------------------------------------------------------


def summary(result: BackendResult) -> dict[str, Any]:
    """Worst values over all points: what the table shows."""
    logits = [p.logits for p in result.points if p.logits is not None]
    worst_state = max(((n, m.normalized) for p in result.points for n, m in p.state.items()), key=lambda t: t[1], default=("-", 0.0))
    return {
        "logits_max_abs": max((m.error.max_abs for m in logits), default=math.nan),
        "logits_normalized": max((m.error.normalized for m in logits), default=math.nan),
        "logits_p99_abs": max((m.error.p99_abs for m in logits), default=math.nan),
        "kl_max": max((m.kl_max for m in logits), default=math.nan),
        "argmax_agree": min((m.argmax_agree for m in logits), default=math.nan),
        "top5_agree": min((m.top5_agree for m in logits), default=math.nan),
        "worst_state": worst_state[0],
        "state_normalized": worst_state[1],
        "tolerance_used": max((p.budget for p in result.points), default=math.nan),
    }


COLUMNS = ("backend", "result", "logits max|d|", "logits norm", "KL max", "argmax", "top-5", "greedy", "worst state (norm)", "tol used")


def table(results: list[BackendResult]) -> str:
    rows: list[tuple[str, ...]] = [COLUMNS]
    for r in results:
        if r.status in ("skipped", "error"):
            rows.append((r.name, r.status, *["-"] * (len(COLUMNS) - 2)))
            continue
        s = summary(r)
        rows.append(
            (
                r.name,
                r.status.upper(),
                f"{s['logits_max_abs']:.2e}",
                f"{s['logits_normalized']:.2e}",
                f"{s['kl_max']:.1e}",
                f"{s['argmax_agree']:.0%}",
                f"{s['top5_agree']:.0%}",
                f"{r.greedy_match}/{r.greedy_total}",
                f"{s['worst_state']} {s['state_normalized']:.1e}",
                f"{s['tolerance_used']:.0%}",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    promises = guarantees_table(results)
    lines += ["", *promises] if promises else []
    notes = [f"{r.name}: {r.status}: {r.reason}" for r in results if r.reason]
    tols = sorted({f"{r.dtype}: {r.tolerance.describe()}" for r in results if r.tolerance is not None})
    return "\n".join(lines + [""] + notes + [f"tolerance {t}" for t in tols])


def guarantees_table(results: list[BackendResult]) -> list[str]:
    """One row per backend: each guarantee's worst normalised error and whether it holds."""
    rows: list[tuple[str, ...]] = [("guarantee (self-consistency)", *GUARANTEES)]
    for r in results:
        if r.guarantees:
            rows.append((r.name, *(f"{g.error:.1e} {'ok' if g.passed else 'FAIL'}" for g in r.guarantees)))
    if len(rows) == 1:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return [lines[0], "  ".join("-" * w for w in widths), *lines[1:]]


def to_json(results: list[BackendResult], context: dict[str, Any]) -> str:
    def point(p: PointResult) -> dict[str, Any]:
        return {
            "label": p.label,
            "failures": p.failures,
            "logits": p.logits.to_dict() if p.logits else None,
            "state": {n: m.to_dict() for n, m in p.state.items()},
        }

    backends = [{
        "name": r.name, "dtype": r.dtype, "status": r.status, "reason": r.reason, "seconds": round(r.seconds, 3),
        "tolerance": None if r.tolerance is None else vars(r.tolerance), "greedy_match": r.greedy_match,
        "greedy_total": r.greedy_total, "summary": summary(r) if r.points else None, "points": [point(p) for p in r.points],
        "guarantees": {g.name: g.to_dict() for g in r.guarantees},
    } for r in results]  # fmt: skip
    verdict = "fail" if any(r.failed for r in results) else "pass"
    return json.dumps({**context, "verdict": verdict, "backends": backends}, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
