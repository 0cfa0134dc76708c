"""The multi-step scenario every backend runs, recorded point by point for comparison.

    prefill          T prompt tokens from the initial state          (prefill graph, fresh state)
    step 1..N        each fed the *reference's* greedy token            (step graph, carried state)
    chunked prefill  the same prompt as T1 then T2 tokens, the state     (prefill graph from a
                     carried between the two calls                        non-initial state)

Feeding every backend the reference's tokens (teacher forcing) keeps the inputs identical, so an
error at step k is that backend's own, not the echo of an earlier different choice; the backend's
own argmax is still recorded for the greedy-match length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Scenario:
    tokens: np.ndarray  # [B, T] int64 prompt
    steps: int  # N
    split: int  # T1: the chunked variant prefills tokens[:, :T1] then tokens[:, T1:]

    @classmethod
    def random(cls, vocab_size: int, batch: int, seq: int, steps: int, seed: int = 0) -> Scenario:
        rng = np.random.default_rng(seed)
        tokens = rng.integers(0, vocab_size, size=(batch, seq), dtype=np.int64)
        return cls(tokens, steps, max(1, seq // 2) if seq > 1 else 0)


@dataclass
class Point:
    label: str  # "prefill", "step 3", "chunked prefill"
    logits: np.ndarray  # [B, V] or [B, T, V], float64
    state: dict[str, np.ndarray]  # name -> [n_layer, B, C], float64


@dataclass
class Trace:
    points: list[Point] = field(default_factory=list)
    greedy: list[np.ndarray] = field(default_factory=list)  # argmax [B] after prefill and each step

    @property
    def greedy_tokens(self) -> np.ndarray:
        return np.stack(self.greedy, axis=1)  # [B, N + 1]


def _record(trace: Trace, backend: Any, label: str, logits: Any, state: Any) -> None:
    host = backend.to_host(state)
    logits = np.asarray(logits, np.float64)
    trace.points.append(Point(label, logits, {n: np.asarray(v, np.float64) for n, v in host.items()}))


def run(backend: Any, scenario: Scenario, feed: np.ndarray | None = None) -> Trace:
    """Run `scenario` on `backend`; `feed` [B, N] are the step tokens (None: its own greedy tokens)."""
    trace = Trace()
    tokens = scenario.tokens
    logits, state = backend.prefill(tokens, backend.initial_state(tokens.shape[0]))
    _record(trace, backend, "prefill", logits, state)
    for i in range(scenario.steps):
        last = np.asarray(logits)
        trace.greedy.append((last[:, -1] if last.ndim == 3 else last).argmax(-1).astype(np.int64))
        token = trace.greedy[-1] if feed is None else feed[:, i]
        logits, state = backend.step(np.ascontiguousarray(token, np.int64), state)
        _record(trace, backend, f"step {i + 1}", logits, state)
    last = np.asarray(logits)
    trace.greedy.append((last[:, -1] if last.ndim == 3 else last).argmax(-1).astype(np.int64))
    if scenario.split:
        _, state = backend.prefill(tokens[:, : scenario.split], backend.initial_state(tokens.shape[0]))
        logits, state = backend.prefill(tokens[:, scenario.split :], state)
        _record(trace, backend, "chunked prefill", logits, state)
    return trace


def step_feed(reference: Trace) -> np.ndarray:
    """The reference's greedy tokens to feed other backends' steps: [B, N]."""
    return reference.greedy_tokens[:, :-1]
