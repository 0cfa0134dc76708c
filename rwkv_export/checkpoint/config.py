"""ModelConfig: what a checkpoint is, read off its keys and shapes (never from a side file alone)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of an RWKV checkpoint.

    version: "4", "5.1", "5.2", "6" or "7" (string: 5.1 and 5.2 differ in architecture).
    ffn_size: width of the channel-mixing hidden layer (4 * n_embd in the released models).
    dtype: the storage dtype of the matrices on disk ("float32", "float16", "bfloat16").
    """

    version: str
    n_layer: int
    n_embd: int
    vocab_size: int
    ffn_size: int
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)  # version-specific facts (heads, eps, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
