"""What a version registry entry holds (`VersionInfo`), and the parts entries share.

Plain data and small functions over shapes: no torch, no onnx, so every stage can read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rwkv_export.errors import RwkvExportError

Shapes = dict[str, tuple[int, ...]]  # BlinkDL key (within a block: "att.key.weight") -> shape


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


class BlockShapes:
    """The shapes of a state dict's first blocks, read with one-line errors (config inference)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], where: str, version: str) -> None:
        self.shapes, self.where, self.version = shapes, where, version

    def get(self, key: str, block: int = 0) -> tuple[int, ...] | None:
        """The shape of blocks.<block>.att.<key>, or None if absent."""
        return self.shapes.get(f"blocks.{block}.att.{key}")

    def need(self, key: str, ndim: int) -> tuple[int, ...]:
        """The shape of blocks.0.att.<key>, which must exist with `ndim` dimensions."""
        full = f"blocks.0.att.{key}"
        if full not in self.shapes:
            raise RwkvExportError(f"{self.where}: RWKV-{self.version} key '{full}' is missing")
        found = self.shapes[full]
        if len(found) != ndim:
            raise RwkvExportError(f"{self.where}: '{full}' has shape {list(found)}, expected {ndim} dimensions")
        return found

    def fail(self, message: str) -> RwkvExportError:
        return RwkvExportError(f"{self.where}: {message}")


def head_layer_shapes(config: Any) -> Shapes:
    """The keys every version with heads (5-7) has in each block: ln_x, the four attention and two
    channel-mix matrices, with dim_att = n_head * head_size."""
    c, f = config.n_embd, config.ffn_size
    a = config.n_head * config.head_size
    shapes = {"att.ln_x.weight": (a,), "att.ln_x.bias": (a,), "ffn.key.weight": (f, c), "ffn.value.weight": (c, f)}
    for m in ("key", "value", "receptance"):
        shapes[f"att.{m}.weight"] = (a, c)
    shapes["att.output.weight"] = (c, a)
    return shapes


def heads_from(s: BlockShapes, head_key: str) -> dict[str, Any]:
    """n_head, head_size from a [H, N] tensor (v6 time_faaaa, v7 r_k), checked against dim_att."""
    dim_att = s.need("key.weight", 2)[0]
    h, n = s.need(head_key, 2)
    if h * n != dim_att:
        raise s.fail(f"'blocks.0.att.{head_key}' has shape {[h, n]}: heads x head size must equal dim_att {dim_att} (att.key.weight rows)")
    return {"n_head": h, "head_size": n}


# float32: a few ulp (24-bit mantissa) per op over a few layers; float16 with rescale: 11-bit mantissa
# over ~10 roundings per layer and fp16 matmul accumulation; bfloat16: the same with 8x coarser rounding.
LOGITS_RTOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 8e-2}


def _ffn_4x(n_embd: int) -> int:
    return 4 * n_embd


def _no_fields(s: BlockShapes) -> dict[str, Any]:
    return {}


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
    # The checkpoint's keys in block `layer` (without the "blocks.<i>." prefix): (required, optional).
    layer_shapes: Callable[[Any, int], tuple[Shapes, Shapes]]
    read_fields: Callable[[BlockShapes], dict[str, Any]] = _no_fields  # typed config fields from block shapes
    config_fields: tuple[str, ...] = ()  # the optional ModelConfig fields this version sets
    random_config: Mapping[str, Any] = field(default_factory=dict)  # fixed fields of a random checkpoint
    default_ffn_size: Callable[[int], int] = _ffn_4x  # channel-mix width of a random checkpoint
    # ln_x GroupNorm eps (None: no GroupNorm), and per checkpoint format where it differs (RWKV5.md).
    group_norm_eps: float | None = None
    group_norm_eps_by_format: Mapping[str, float] = field(default_factory=dict)
    float16_rescale_every: int = 6  # default residual rescale period in float16 (0: none)
    # How far the reference's (and an export's) logits may stray from float64, relative to the largest
    # |logit|, per dtype: the tests' bound (the `verify` defaults are per dtype: parity/tolerances.py).
    logits_rtol: Mapping[str, float] = field(default_factory=lambda: dict(LOGITS_RTOL))
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
