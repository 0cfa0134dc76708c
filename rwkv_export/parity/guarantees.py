"""Serving guarantees: properties a backend must have against *itself*, checked by `verify`.

    continuation   prefill(A) -> state file -> load -> prefill(B)  ==  prefill(A + B), and the greedy
                   tokens generated after both are identical
    chunking       one prefill of T tokens  ==  the same T tokens fed in chunks (sizes 1, 2, 3, T/3,
                   T - 1 and an irregular split), the state carried
    batch          a sequence run alone  ==  the same sequence as row 1 of a batch of different
                   sequences of equal length (prefill and teacher-forced steps), and inside the
                   length groups `run` forms for prompts of different lengths
    step=prefill   step(x, S)  ==  prefill([x], S) at T = 1, from the initial and from a used state

Each comparison takes logits (the last position) and every state tensor per layer, and must stay
within the backend dtype's *state* tolerance (atol + rtol * max |ref|); argmax must agree
everywhere. The figure is the worst normalised error (max |diff| / max |ref|).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.generate import last_logits, prefill_prompts
from rwkv_export.manifest import Manifest
from rwkv_export.parity.compare import per_layer_error
from rwkv_export.parity.scenario import Scenario
from rwkv_export.parity.tolerances import Tolerance

NAMES = ("continuation", "chunking", "batch", "step=prefill")


@dataclass
class GuaranteeResult:
    name: str
    error: float = 0.0  # worst max|diff| / max|ref| over logits and state layers
    used: float = 0.0  # worst fraction of the tolerance used (> 1 fails)
    greedy_identical: bool = True
    detail: str = ""  # where the worst error is, or what broke

    @property
    def passed(self) -> bool:
        return self.used <= 1.0 and self.greedy_identical

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "pass" if self.passed else "fail",
            "error": self.error,
            "tolerance_used": self.used,
            "greedy_identical": self.greedy_identical,
            "detail": self.detail,
        }


def _host(backend: Any, state: Any) -> dict[str, np.ndarray]:
    return {n: np.asarray(v, np.float64) for n, v in backend.to_host(state).items()}


def _compare(result: GuaranteeResult, where: str, ref: tuple[Any, Any], got: tuple[Any, Any], backend: Any, tol: Tolerance) -> None:
    """Fold one (logits, state) comparison into `result`."""
    ref_logits, got_logits = last_logits(np.asarray(ref[0], np.float64)), last_logits(np.asarray(got[0], np.float64))
    pairs = [("logits", ref_logits[None], got_logits[None])]
    ref_state, got_state = _host(backend, ref[1]), _host(backend, got[1])
    pairs += [(name, value, got_state[name]) for name, value in ref_state.items()]
    for name, r, g in pairs:
        max_abs, scale = per_layer_error(r, g)
        for layer in range(len(scale)):
            limit = tol.state_atol + tol.state_rtol * scale[layer]
            used = max_abs[layer] / limit if limit > 0 else (0.0 if max_abs[layer] == 0 else np.inf)
            if not np.isfinite(max_abs[layer]):
                used = np.inf
            result.error = max(result.error, float(max_abs[layer] / max(scale[layer], 1e-30)))
            if used > result.used:
                result.used = float(used)
                result.detail = f"{where}: {name}" + (f" layer {layer}" if name != "logits" else "")
    if not np.array_equal(ref_logits.argmax(-1), got_logits.argmax(-1)):
        result.greedy_identical = False
        result.detail = f"{where}: argmax differs"


def _through_file(backend: Any, state: Any) -> dict[str, np.ndarray]:
    """The state saved to a file and loaded back: a state file for an export (an ExportedModel's
    save_state / load_state), a plain .npz otherwise (the torch reference has no export)."""
    host = backend.to_host(state)
    with tempfile.TemporaryDirectory(prefix="rwkv-guarantee-") as tmp:
        path = Path(tmp) / "state.npz"
        if isinstance(getattr(backend, "manifest", None), Manifest):
            backend.save_state(path, host)
            return backend.load_state(path)
        np.savez(path, **host)
        with np.load(path, allow_pickle=False) as npz:
            return {n: npz[n] for n in npz.files}


def _greedy(backend: Any, logits: Any, state: Any, steps: int) -> np.ndarray:
    out = []
    for _ in range(steps):
        token = last_logits(np.asarray(logits)).argmax(-1).astype(np.int64)
        out.append(token)
        logits, state = backend.step(token, state)
    return np.stack(out, 1) if out else np.zeros((0,), np.int64)


def continuation(backend: Any, tokens: np.ndarray, steps: int, tol: Tolerance) -> GuaranteeResult:
    result = GuaranteeResult("continuation")
    full = tokens if tokens.shape[1] >= 2 else np.concatenate([tokens, tokens], 1)
    split = full.shape[1] // 2
    whole = backend.prefill(full, backend.initial_state(full.shape[0]))
    _, first = backend.prefill(full[:, :split], backend.initial_state(full.shape[0]))
    resumed = backend.prefill(full[:, split:], _through_file(backend, first))
    _compare(result, f"prefill({split}) + file + prefill({full.shape[1] - split})", whole, resumed, backend, tol)
    n = max(steps, 1)
    if not np.array_equal(_greedy(backend, whole[0], whole[1], n), _greedy(backend, resumed[0], resumed[1], n)):
        result.greedy_identical, result.detail = False, f"the {n} greedy tokens after the prompt differ"
    return result


def chunk_plans(length: int, seed: int = 0) -> list[list[int]]:
    """Chunk sizes summing to `length`: uniform 1, 2, 3, T/3, and T-1 + 1, plus one irregular split."""
    plans = []
    for size in sorted({1, 2, 3, max(1, length // 3)}):
        if size < length:
            plans.append([size] * (length // size) + ([length % size] if length % size else []))
    if length > 2:
        plans.append([length - 1, 1])
        cuts = sorted(np.random.default_rng(seed).choice(np.arange(1, length), size=min(3, length - 1), replace=False).tolist())
        plans.append(np.diff([0, *cuts, length]).tolist())
    return plans


def chunking(backend: Any, tokens: np.ndarray, tol: Tolerance) -> GuaranteeResult:
    result = GuaranteeResult("chunking")
    batch, length = tokens.shape
    whole = backend.prefill(tokens, backend.initial_state(batch))
    if length < 2:
        result.detail = "a prompt of one token has no split (use --seq 2 or more)"
    for sizes in chunk_plans(length):
        state, start = backend.initial_state(batch), 0
        for size in sizes:
            logits, state = backend.prefill(tokens[:, start : start + size], state)
            start += size
        label = "+".join(map(str, sizes)) if len(sizes) <= 6 else f"{len(sizes)} chunks of {sizes[0]}"
        _compare(result, f"chunks {label}", whole, (logits, state), backend, tol)
    return result


def _teacher_forced(backend: Any, tokens: np.ndarray, feed: np.ndarray) -> list[tuple[Any, Any]]:
    """(logits, state) after the prefill and after each step fed `feed` [B, N]."""
    points = [backend.prefill(tokens, backend.initial_state(tokens.shape[0]))]
    for i in range(feed.shape[1]):
        points.append(backend.step(np.ascontiguousarray(feed[:, i]), points[-1][1]))
    return points


def _row(backend: Any, point: tuple[Any, Any], row: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    logits = np.asarray(point[0])[row : row + 1]
    return logits, {n: v[:, row : row + 1] for n, v in backend.to_host(point[1]).items()}


def batch_invariance(backend: Any, tokens: np.ndarray, steps: int, tol: Tolerance, seed: int = 0) -> GuaranteeResult:
    result = GuaranteeResult("batch")
    rng = np.random.default_rng(seed + 1)
    seq = tokens[:1]
    length = seq.shape[1]
    others = [rng.choice(tokens.ravel(), size=(1, n)) for n in (length, length, length + 1, length + 2)]
    feed_rng = rng.choice(tokens.ravel(), size=(3, max(steps, 1)))
    alone = _teacher_forced(backend, seq, feed_rng[1:2])
    batched = _teacher_forced(backend, np.concatenate([others[0], seq, others[1]]), feed_rng)
    for i, (a, b) in enumerate(zip(alone, batched)):
        _compare(result, "row 1 of 3" + (f", step {i}" if i else ", prefill"), a, _row(backend, b, 1), backend, tol)
    prompts = [others[2][0].tolist(), seq[0].tolist(), others[0][0].tolist(), others[3][0].tolist()]
    logits, state = prefill_prompts(backend, prompts)
    _compare(
        result,
        f"length groups {[len(p) for p in prompts]}, row 1",
        alone[0],
        (logits[1:2], {n: v[:, 1:2] for n, v in state.items()}),
        backend,
        tol,
    )
    return result


def step_equals_prefill(backend: Any, tokens: np.ndarray, tol: Tolerance) -> GuaranteeResult:
    result = GuaranteeResult("step=prefill")
    batch = tokens.shape[0]
    used_logits, used = backend.prefill(tokens, backend.initial_state(batch))
    nxt = last_logits(np.asarray(used_logits)).argmax(-1).astype(np.int64)
    starts: list[tuple[str, np.ndarray, Callable[[], Any]]] = [
        ("initial state", tokens[:, 0], lambda: backend.initial_state(batch)),
        ("after the prompt", nxt, lambda: _copy(backend, used)),
    ]
    for label, token, state in starts:
        stepped = backend.step(np.ascontiguousarray(token), state())
        prefilled = backend.prefill(np.ascontiguousarray(token[:, None]), state())
        _compare(result, label, stepped, prefilled, backend, tol)
    return result


def _copy(backend: Any, state: Any) -> dict[str, np.ndarray]:
    return {n: np.array(v) for n, v in backend.to_host(state).items()}


def check_all(backend: Any, scenario: Scenario, tol: Tolerance) -> list[GuaranteeResult]:
    """The four guarantees on `backend`, over the scenario's prompt."""
    tokens = np.ascontiguousarray(scenario.tokens, np.int64)
    return [
        continuation(backend, tokens, scenario.steps, tol),
        chunking(backend, tokens, tol),
        batch_invariance(backend, tokens, scenario.steps, tol),
        step_equals_prefill(backend, tokens, tol),
    ]
