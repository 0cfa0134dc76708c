"""Per-tensor comparison metrics (pure numpy), the numbers `verify` reports and judges.

Errors are taken against the reference in float64. Besides elementwise relative error (reported,
but meaningless where the reference is near zero), every tensor gets a *normalised* error:
max |got - ref| / max |ref|, which is what the tolerances bound. Logits add argmax and top-5
agreement and the KL divergence of their softmax; greedy decoding adds the exact-match length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TINY = 1e-30  # keeps 0/0 out of relative errors where the reference is exactly zero


@dataclass(frozen=True)
class TensorMetrics:
    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float
    mean_rel: float
    median_rel: float
    p99_rel: float
    scale: float  # max |ref|
    normalized: float  # max_abs / scale: the quantity tolerances bound
    nonfinite: int  # NaN/Inf in `got` where the reference is finite

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def tensor_metrics(ref: np.ndarray, got: np.ndarray) -> TensorMetrics:
    """Error statistics of `got` against `ref` (same shape; any float dtype)."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {list(ref.shape)}, got {list(got.shape)}")
    bad = ~np.isfinite(got) & np.isfinite(ref)
    diff = np.abs(got - ref)
    diff = np.where(bad, np.inf, diff)
    rel = diff / np.maximum(np.abs(ref), TINY)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    return TensorMetrics(
        max_abs=max_abs, mean_abs=float(diff.mean()), median_abs=float(np.median(diff)), p99_abs=float(np.percentile(diff, 99, method="higher")),
        max_rel=float(rel.max()), mean_rel=float(rel.mean()), median_rel=float(np.median(rel)), p99_rel=float(np.percentile(rel, 99, method="higher")),
        scale=scale, normalized=max_abs / max(scale, TINY), nonfinite=int(bad.sum()),
    )  # fmt: skip


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, got_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(got)) over the last axis, in nats; one value per row."""
    lp, lq = log_softmax(ref_logits), log_softmax(got_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def top_k_agreement(ref_logits: np.ndarray, got_logits: np.ndarray, k: int = 5) -> float:
    """Mean fraction of the reference's top-k ids that are also in got's top-k (order ignored)."""
    ref2 = np.asarray(ref_logits).reshape(-1, np.shape(ref_logits)[-1])
    got2 = np.asarray(got_logits).reshape(-1, np.shape(got_logits)[-1])
    k = min(k, ref2.shape[-1])
    ref_top = np.argpartition(-ref2, k - 1, axis=-1)[:, :k]
    got_top = np.argpartition(-got2, k - 1, axis=-1)[:, :k]
    shared = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref_top, got_top)]
    return float(np.mean(shared)) / k


@dataclass(frozen=True)
class LogitsMetrics:
    error: TensorMetrics
    argmax_agree: float  # fraction of rows with the same argmax
    top5_agree: float
    kl_mean: float
    kl_max: float

    def to_dict(self) -> dict[str, object]:
        return {
            "error": self.error.to_dict(),
            "argmax_agree": self.argmax_agree,
            "top5_agree": self.top5_agree,
            "kl_mean": self.kl_mean,
            "kl_max": self.kl_max,
        }


def logits_metrics(ref: np.ndarray, got: np.ndarray) -> LogitsMetrics:
    """Metrics of logits [..., V] (any leading shape: [B, V] or [B, T, V])."""
    kl = kl_divergence(ref, got) if np.isfinite(got).all() else np.array([np.inf])
    return LogitsMetrics(
        error=tensor_metrics(ref, got),
        argmax_agree=float((np.argmax(ref, -1) == np.argmax(got, -1)).mean()),
        top5_agree=top_k_agreement(ref, got, 5),
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
    )


def greedy_match_length(ref_tokens: np.ndarray, got_tokens: np.ndarray) -> int:
    """Leading positions where two greedy sequences agree ([N] or [B, N]: the shortest over rows)."""
    ref = np.atleast_2d(np.asarray(ref_tokens))
    got = np.atleast_2d(np.asarray(got_tokens))
    n = min(ref.shape[-1], got.shape[-1])
    same = ref[:, :n] == got[:, :n]
    lengths = [int(np.argmin(row)) if not row.all() else n for row in same]
    return min(lengths)


def per_layer_error(ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A state tensor [n_layer, B, C] -> (max |diff| per layer, max |ref| per layer), each [n_layer]."""
    ref = np.asarray(ref, np.float64).reshape(np.shape(ref)[0], -1)
    got = np.asarray(got, np.float64).reshape(ref.shape)
    diff = np.abs(got - ref)
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN compares false with everything: make it fail
    return diff.max(axis=1), np.abs(ref).max(axis=1)
