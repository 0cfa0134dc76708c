"""ModelConfig: what a checkpoint is, read off its keys and shapes (never from a side file alone)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from rwkv_export.errors import RwkvExportError

# The version-specific fields, in the order the serialised form's "extra" lists them.
EXTRA_FIELDS = ("n_head", "head_size", "per_head_decay", "bonus_key", "lora_mix", "lora_decay", "lora_a", "lora_v",
                "lora_gate", "group_norm_eps")  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of an RWKV checkpoint.

    version: "4", "5.1", "5.2", "6" or "7" (string: 5.1 and 5.2 differ in architecture).
    ffn_size: width of the channel-mixing hidden layer (4 * n_embd in the released models).
    dtype: the storage dtype of the matrices on disk ("float32", "float16", "bfloat16").
    The rest is set where the version has it (rwkv_export.versions: `config_fields`), else None:
    n_head, head_size: heads of the WKV state (RWKV-5/6/7; n_head * head_size = dim_att);
    per_head_decay, bonus_key: RWKV-5.x decay shaped [H] (5.1) or [H, N], bonus in time_first or time_faaaa;
    lora_*: LoRA ranks (v6: mix, decay; v7: decay, a, v, gate; lora_v 0 in a 1-layer v7 without v1);
    group_norm_eps: ln_x GroupNorm eps (RWKV-5/6/7).
    """

    version: str
    n_layer: int
    n_embd: int
    vocab_size: int
    ffn_size: int
    dtype: str = "float32"
    n_head: int | None = None
    head_size: int | None = None
    per_head_decay: bool | None = None
    bonus_key: str | None = None
    lora_mix: int | None = None
    lora_decay: int | None = None
    lora_a: int | None = None
    lora_v: int | None = None
    lora_gate: int | None = None
    group_norm_eps: float | None = None

    @property
    def heads(self) -> tuple[int, int]:
        """(n_head, head_size); a one-line error for a version without heads."""
        if self.n_head is None or self.head_size is None:
            raise RwkvExportError(f"RWKV-{self.version} has no heads (n_head / head_size are RWKV-5/6/7 facts)")
        return self.n_head, self.head_size

    def to_dict(self) -> dict[str, Any]:
        """The serialised form (manifests, reports, bench workspaces): base fields plus "extra" holding
        the version-specific fields that are set, as the format has always had it."""
        base = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in EXTRA_FIELDS}
        return {**base, "extra": {k: getattr(self, k) for k in EXTRA_FIELDS if getattr(self, k) is not None}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The inverse of to_dict (fields may also sit at the top level); unknown fields raise RwkvExportError."""
        data = dict(data)
        extra = data.pop("extra", None) or {}
        known = {f.name for f in fields(cls)}
        bad = sorted(set(data) - known) + sorted(set(extra) - set(EXTRA_FIELDS)) + sorted(set(data) & set(extra))
        if bad:
            raise RwkvExportError(f"model config: unknown or repeated field '{bad[0]}'")
        try:
            return cls(**data, **extra)
        except TypeError as exc:
            raise RwkvExportError(f"model config: {exc}") from None
