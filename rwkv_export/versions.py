"""The version registry: one entry per RWKV version with everything the stages need to know about it.

In the role of optimum's per-architecture `OnnxConfig`, as plain data (no torch, no onnx import, so
every stage can read it): the reference model class, the WKV op (its schema, bodies and kernels live
in the op registry, custom_ops/), the recurrent state tensors with their shapes and initial values,
the typed config fields the version carries, how to recognise its checkpoints, the GroupNorm eps
and float16 rescale rules, and what the peer implementations (transformers, the `rwkv` package) do.

Adding a version is one `VersionInfo` here plus its model file and op file (README, "Adding an RWKV
version").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rwkv_export.errors import RwkvExportError

PP_INIT = -1e38  # RWKV-4's running max exponent starts at "minus infinity" (custom_ops/wkv4.py PP_INIT)


@dataclass(frozen=True)
class StateTensor:
    """One recurrent state tensor: its name (graph input; output `<name>_out`), its shape as config
    field names plus `batch`, and its initial value."""

    name: str
    dims: tuple[str, ...]
    initial: float = 0.0


SHIFT_DIMS = ("n_layer", "batch", "n_embd")
X_ATT = StateTensor("x_att", SHIFT_DIMS)  # previous token's LN1 output (time-mix token shift)
X_FFN = StateTensor("x_ffn", SHIFT_DIMS)  # previous token's LN2 output (channel-mix token shift)
HEAD_STATE = (X_ATT, StateTensor("wkv", ("n_layer", "batch", "n_head", "head_size", "head_size")), X_FFN)


def _ffn_4x(n_embd: int) -> int:
    return 4 * n_embd


def _ffn_v6(n_embd: int) -> int:
    return int(3.5 * n_embd) // 32 * 32 or 4 * n_embd  # RWKV-LM x060's dim_ffn


@dataclass(frozen=True)
class VersionInfo:
    """Everything version-specific that is not the model's arithmetic (model file) or the op's (op file)."""

    version: str
    model: str  # "module:Class" of the torch reference (rwkv_export/model/), imported on demand
    op: str  # the WKV op type, an entry of the op registry (rwkv_export.ops)
    state: tuple[StateTensor, ...]  # in graph-input order: x_att, the op's state, x_ffn
    # Checkpoint detection: BlinkDL key suffixes, any group of which (all keys of the group) marks the
    # version; versions are tried in DETECTION_ORDER, RWKV-4 (no marker) last.
    markers: tuple[tuple[str, ...], ...]
    config_fields: tuple[str, ...] = ()  # the optional ModelConfig fields this version sets
    random_config: Mapping[str, Any] = field(default_factory=dict)  # fixed fields of a random checkpoint
    default_ffn_size: Callable[[int], int] = _ffn_4x  # channel-mix width of a random checkpoint
    # ln_x GroupNorm eps (None: no GroupNorm), and per checkpoint format where it differs (RWKV5.md).
    group_norm_eps: float | None = None
    group_norm_eps_by_format: Mapping[str, float] = field(default_factory=dict)
    float16_rescale_every: int = 6  # default residual rescale period in float16 (0: none)
    transformers_class: str | None = None  # transformers' class for it (Hugging Face directories), if any
    rwkv_package_v7: bool = False  # the `rwkv` package runs it only when imported with RWKV_V7_ON=1

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.state)

    @property
    def state_initial(self) -> dict[str, float]:
        return {t.name: t.initial for t in self.state}

    @property
    def has_heads(self) -> bool:
        return "n_head" in self.config_fields

    @property
    def lora_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.config_fields if f.startswith("lora_"))

    def default_group_norm_eps(self, fmt: str) -> float | None:
        """The documented ln_x eps of a checkpoint in format `fmt` ("pth", "rwkvcpp", ...)."""
        for prefix, eps in self.group_norm_eps_by_format.items():
            if fmt.startswith(prefix):
                return eps
        return self.group_norm_eps


_V5_FIELDS = ("n_head", "head_size", "per_head_decay", "bonus_key", "group_norm_eps")
# GroupNorm eps of the attention output (ln_x), a property of the checkpoint (RWKV5.md "GroupNorm eps"):
# RWKV-LM applied ln_x to y / head_size_divisor (8) with eps 1e-5 from 5.2 on (effective 64e-5);
# the gateless 5.1 previews normalised raw y with eps 1e-5; rwkv.cpp runs every 5.x file with 1e-5
# (its tiny files' expected logits need it); v6 and v7 use 64e-5 everywhere.
_RWKVCPP_V5 = {"rwkvcpp": 1e-5}

VERSIONS: dict[str, VersionInfo] = {
    v.version: v
    for v in (
        VersionInfo(
            "4", "rwkv_export.model.rwkv4:RWKV4", "WKV4",
            state=(X_ATT, StateTensor("aa", SHIFT_DIMS), StateTensor("bb", SHIFT_DIMS), StateTensor("pp", SHIFT_DIMS, PP_INIT), X_FFN),
            markers=((),), transformers_class="RwkvForCausalLM",
        ),
        VersionInfo(
            "5.1", "rwkv_export.model.rwkv5:RWKV5", "WKV5", HEAD_STATE, markers=(("att.ln_x.weight",),),
            config_fields=_V5_FIELDS, random_config={"per_head_decay": True, "bonus_key": "time_first"},
            group_norm_eps=1e-5, group_norm_eps_by_format=_RWKVCPP_V5,
        ),
        VersionInfo(
            "5.2", "rwkv_export.model.rwkv5:RWKV5", "WKV5", HEAD_STATE, markers=(("att.ln_x.weight", "att.gate.weight"),),
            config_fields=_V5_FIELDS, random_config={"per_head_decay": False, "bonus_key": "time_faaaa"},
            group_norm_eps=64e-5, group_norm_eps_by_format=_RWKVCPP_V5,
        ),
        VersionInfo(
            "6", "rwkv_export.model.rwkv6:RWKV6", "WKV6", HEAD_STATE, markers=(("att.time_maa_x",),),
            config_fields=("n_head", "head_size", "lora_mix", "lora_decay", "group_norm_eps"),
            default_ffn_size=_ffn_v6, group_norm_eps=64e-5,
        ),
        VersionInfo(
            "7", "rwkv_export.model.rwkv7:RWKV7", "WKV7", HEAD_STATE, markers=(("att.r_k",), ("att.x_rwkvag",), ("att.w0",)),
            config_fields=("n_head", "head_size", "lora_decay", "lora_a", "lora_v", "lora_gate", "group_norm_eps"),
            group_norm_eps=64e-5, float16_rescale_every=0, rwkv_package_v7=True,  # x070 has no float16 rescale
        ),
    )
}  # fmt: skip
KNOWN_VERSIONS = tuple(VERSIONS)
DETECTION_ORDER = ("7", "6", "5.2", "5.1", "4")  # most specific markers first


def version_info(version: str) -> VersionInfo:
    """The registry entry of `version`; a one-line error naming the known ones otherwise."""
    info = VERSIONS.get(version)
    if info is None:
        raise RwkvExportError(f"unknown RWKV version '{version}' (expected one of {', '.join(KNOWN_VERSIONS)})")
    return info


def detect_version(keys: Iterable[str]) -> str:
    """The version of a state dict in BlinkDL naming, from the registry's key markers."""
    keys = list(keys)

    def has(suffix: str) -> bool:
        return any(k.endswith(suffix) for k in keys)

    for version in DETECTION_ORDER:
        if any(all(has(s) for s in group) for group in VERSIONS[version].markers):
            return version
    raise AssertionError("unreachable: RWKV-4's empty marker group always matches")


def state_shapes(config: Any, batch: int | str) -> dict[str, tuple[int | str, ...]]:
    """Each state tensor's shape for `config` (a ModelConfig), in graph-input order; `batch` may be
    a number or a symbolic name."""
    sizes: Mapping[str, Any] = {"batch": batch}
    return {t.name: tuple(sizes[d] if d in sizes else getattr(config, d) for d in t.dims) for t in version_info(config.version).state}
