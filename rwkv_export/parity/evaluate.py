"""Language-model accuracy of each backend on real text, run exactly as an RNN (`rwkv-export eval`).

The text is tokenized once and fed in chunks of `chunk` tokens with the recurrent state carried from
chunk to chunk, so any length runs in memory bounded by one chunk's logits (plus 4 bytes a token for
the KL values that give the p99). Every backend sees the same chunks; the reference (torch float64,
or float32 for big models) runs first and each backend's next-token distribution is compared with it:

- perplexity exp(mean NLL) of the text's own next tokens, and bits per byte (NLL in bits / UTF-8
  bytes of the scored text: comparable across tokenizers);
- KL(reference || backend) of the next-token distribution, mean and p99 over positions;
- top-1 agreement: how often the backend's argmax equals the reference's.

Exports made without `--all-logits` are fed token by token through their step graph (same numbers,
slower); `export --all-logits` lets a whole chunk go through the prefill graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError


@dataclass
class EvalText:
    """The token ids to score and how many UTF-8 bytes their targets cover."""

    tokens: np.ndarray
    n_bytes: int
    source: str


def read_text(path: str | Path, start: float = 0.0, end: float = 1.0) -> str:
    """The characters [start, end) (fractions of the text's length) of a UTF-8 file; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise RwkvExportError(f"text file '{path}' does not exist")
    if not 0.0 <= start < end <= 1.0:
        raise RwkvExportError(f"--start {start:g} / --end {end:g}: need 0 <= start < end <= 1 (fractions of the text)")
    data = path.read_bytes()
    if not data:
        raise RwkvExportError(f"text file '{path}' is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RwkvExportError(f"text file '{path}' is not UTF-8 (invalid byte at offset {exc.start}); eval needs text") from None
    return text[int(len(text) * start) : int(len(text) * end)]


def tokenize(text: str, tokenizer: Any, chunk: int, max_tokens: int | None, source: str) -> EvalText:
    """Token ids of `text` (at most max_tokens), refusing a text shorter than one chunk plus its target."""
    tokens = np.asarray(tokenizer.encode(text), dtype=np.int64)
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    if len(tokens) < chunk + 1:
        raise RwkvExportError(
            f"{source} gives {len(tokens)} tokens, fewer than one chunk of {chunk} plus the token it "
            "predicts; use a longer text or a smaller --chunk"
        )
    n_bytes = len(tokenizer.decode(tokens[1:].tolist()).encode("utf-8"))
    return EvalText(tokens, n_bytes, source)


@dataclass
class Scores:
    """Running sums for one backend."""

    name: str
    precision: str
    nll: float = 0.0
    count: int = 0
    agree: int = 0
    kl: list[np.ndarray] = field(default_factory=list)

    def add(self, logits: np.ndarray, targets: np.ndarray, ref_logp: np.ndarray, ref_top: np.ndarray) -> None:
        logp = log_softmax(logits)
        self.nll -= float(logp[np.arange(len(targets)), targets].sum())
        self.count += len(targets)
        self.agree += int((logp.argmax(-1) == ref_top).sum())
        self.kl.append(np.maximum((np.exp(ref_logp) * (ref_logp - logp)).sum(-1), 0.0).astype(np.float32))

    def result(self, n_bytes_per_token: float) -> dict[str, Any]:
        kl = np.concatenate(self.kl) if self.kl else np.zeros(1, np.float32)
        mean_nll = self.nll / max(self.count, 1)
        return {
            "backend": self.name,
            "precision": self.precision,
            "tokens": self.count,
            "perplexity": math.exp(mean_nll),
            "bits_per_byte": mean_nll / math.log(2) / n_bytes_per_token,
            "kl_mean": float(kl.mean()),
            "kl_p99": float(np.quantile(kl, 0.99)),
            "top1_agreement": self.agree / max(self.count, 1),
        }


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def run_chunk(backend: Any, tokens: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
    """Logits [T, V] for every position of `tokens` [T] and the carried state: one prefill when the backend
    returns every position's logits, else one step per token."""
    logits, new = backend.prefill(tokens[None, :], state)
    if logits.ndim == 3:
        return logits[0], new
    rows = []
    for token in tokens:
        out, state = backend.step(token[None], state)
        rows.append(out[0])
    return np.stack(rows), state


def evaluate(
    reference: Any, backends: Sequence[Any], text: EvalText, chunk: int, progress: Callable[[int], None] = lambda n: None
) -> list[dict[str, Any]]:
    """Score `reference` and every backend on `text` (each: name, dtype, prefill, step, initial_state)."""
    everyone = [reference, *backends]
    scores = [Scores(b.name, getattr(b, "precision", b.dtype)) for b in everyone]
    states = [b.initial_state(1) for b in everyone]
    tokens = text.tokens
    for begin in range(0, len(tokens) - 1, chunk):
        inputs = tokens[begin : min(begin + chunk, len(tokens) - 1)]
        targets = tokens[begin + 1 : begin + 1 + len(inputs)]
        ref_logits, states[0] = run_chunk(reference, inputs, states[0])
        ref_logp = log_softmax(ref_logits)
        ref_top = ref_logp.argmax(-1)
        scores[0].add(ref_logits, targets, ref_logp, ref_top)
        for i, backend in enumerate(backends, start=1):
            logits, states[i] = run_chunk(backend, inputs, states[i])
            scores[i].add(logits, targets, ref_logp, ref_top)
        progress(len(inputs))
    per_token = text.n_bytes / max(len(tokens) - 1, 1)
    return [s.result(per_token) for s in scores]
