"""Text generation over any prefill/step backend: sampling (pure numpy) and the token loop.

A backend is anything with `initial_state(batch)`, `prefill(tokens [B, T], state)` and
`step(tokens [B], state)` returning (logits, new_state): an `ExportedModel`, or the torch reference
wrapped by `rwkv_export.parity.backends`.

Batches of prompts of different lengths: an RNN must not be left-padded (pad tokens would flow
into the state), so prompts are grouped by length, each group prefilled as one batch, and the rows
of the resulting states put back in prompt order before the batched steps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rwkv_export.errors import RwkvExportError
from rwkv_export.runtime.base import state_to_host

State = dict[str, Any]  # name -> [n_layer, batch, n_embd] (numpy, or a device value the backend understands)


class Backend(Protocol):
    def initial_state(self, batch: int) -> State: ...

    def prefill(self, tokens: np.ndarray, state: State | None = None) -> tuple[np.ndarray, State]: ...

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]: ...


# --- sampling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy; top_k 0 and top_p 1 = no truncation."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise RwkvExportError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise RwkvExportError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise RwkvExportError(f"top-k must be >= 0, got {self.top_k}")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=axis, keepdims=True)  # shift: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def truncated_probs(logits: np.ndarray, temperature: float, top_p: float = 1.0, top_k: int = 0) -> np.ndarray:
    """logits [V] -> the sampling distribution [V] after temperature, top-k and top-p (nucleus)."""
    probs = softmax(np.asarray(logits, np.float64) / temperature)
    if top_k and top_k < probs.size:
        kth = np.partition(probs, -top_k)[-top_k]
        probs = np.where(probs >= kth, probs, 0.0)
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep the smallest prefix reaching top_p of the (possibly top-k truncated) mass; at least one.
        keep = int(np.searchsorted(cumulative, top_p * cumulative[-1])) + 1
        mask = np.zeros_like(probs, dtype=bool)
        mask[order[:keep]] = True
        probs = np.where(mask, probs, 0.0)
    return probs / probs.sum()


def sample(logits: np.ndarray, sampling: Sampling, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """logits [B, V] -> token ids [B] int64. Row b draws from rngs[b] (rows independent of the batch)."""
    logits = np.asarray(logits)
    if sampling.temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    out = np.empty(logits.shape[0], np.int64)
    for b, row in enumerate(logits):
        cdf = np.cumsum(truncated_probs(row, sampling.temperature, sampling.top_p, sampling.top_k))
        out[b] = min(int(np.searchsorted(cdf, rngs[b].random() * cdf[-1], side="right")), row.size - 1)
    return out


def row_generators(seed: int | None, batch: int) -> list[np.random.Generator]:
    """One generator per prompt, seeded by (seed, row): a prompt samples the same alone or batched."""
    return [np.random.default_rng(None if seed is None else [seed, row]) for row in range(batch)]


# --- batched prefill -----------------------------------------------------------------------------


def last_logits(logits: np.ndarray) -> np.ndarray:
    """[B, V] or an --all-logits prefill's [B, T, V] -> [B, V]."""
    return logits[:, -1] if logits.ndim == 3 else logits


def prefill_prompts(
    model: Backend, prompts: Sequence[Sequence[int]], chunk: int | None = None, initial: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, State]:
    """Prefill prompts of any lengths without padding: one batch per distinct length.

    Returns logits [B, V] of each prompt's last token and the state with rows in prompt order.
    `chunk` feeds long prompts in pieces of at most that many tokens (the carried state makes
    the result the same up to rounding). `initial` (host arrays, batch on axis 1, rows in prompt
    order) continues each prompt from a saved state instead of the model's initial state.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise RwkvExportError("every prompt needs at least one token")
    groups: dict[int, list[int]] = {}
    for row, prompt in enumerate(prompts):
        groups.setdefault(len(prompt), []).append(row)
    logits_rows: list[np.ndarray | None] = [None] * len(prompts)
    state_rows: list[State | None] = [None] * len(prompts)
    for length, rows in groups.items():
        tokens = np.array([prompts[r] for r in rows], dtype=np.int64)  # [b, length]
        state = model.initial_state(len(rows)) if initial is None else {n: np.ascontiguousarray(v[:, rows]) for n, v in initial.items()}
        step = chunk or length
        for start in range(0, length, step):
            logits, state = model.prefill(tokens[:, start : start + step], state)
        host = state_to_host(state)
        for i, row in enumerate(rows):
            logits_rows[row] = last_logits(logits)[i]
            state_rows[row] = {name: value[:, i] for name, value in host.items()}
    names = list(state_rows[0])  # type: ignore[arg-type]
    stacked = {n: np.stack([s[n] for s in state_rows], axis=1) for n in names}  # type: ignore[index]
    return np.stack(logits_rows), stacked  # type: ignore[arg-type]


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class Stats:
    prompt_tokens: int = 0
    prefill_s: float = 0.0
    steps: int = 0  # step-graph calls (one token per prompt each)
    step_s: float = 0.0
    generated: list[list[int]] = field(default_factory=list)
    state: State | None = None  # the latest state: after the prompt, then after each fed token

    def summary(self) -> str:
        prefill = self.prompt_tokens / self.prefill_s if self.prefill_s else float("inf")
        step_ms = 1000 * self.step_s / self.steps if self.steps else 0.0
        return (
            f"prefill {self.prompt_tokens} tokens in {self.prefill_s * 1000:.1f} ms ({prefill:,.0f} tok/s); "
            f"{self.steps} steps at {step_ms:.2f} ms/token (batch {len(self.generated)})"
        )


def generate(
    model: Backend,
    prompts: Sequence[Sequence[int]],
    max_tokens: int,
    sampling: Sampling = Sampling(),
    stats: Stats | None = None,
    chunk: int | None = None,
    initial: dict[str, np.ndarray] | None = None,
) -> Iterator[np.ndarray]:
    """Yield the next token of every prompt ([B] int64), max_tokens times: prefill, then steps.

    `stats.state` is the state after the prompt and every token fed back so far (the last yielded
    token is not fed: step it once more to continue). `initial`: see `prefill_prompts`."""
    stats = stats if stats is not None else Stats()
    stats.generated = [[] for _ in prompts]
    rngs = row_generators(sampling.seed, len(prompts))
    start = time.perf_counter()
    logits, state = prefill_prompts(model, prompts, chunk, initial)
    stats.state = state
    stats.prefill_s = time.perf_counter() - start
    stats.prompt_tokens = sum(len(p) for p in prompts)
    for i in range(max_tokens):
        tokens = sample(logits, sampling, rngs)
        for row, token in zip(stats.generated, tokens):
            row.append(int(token))
        yield tokens
        if i + 1 < max_tokens:  # the last token needs no logits after it
            start = time.perf_counter()
            logits, state = model.step(tokens, state)
            stats.state = state
            logits = np.asarray(logits)
            stats.step_s += time.perf_counter() - start
            stats.steps += 1
