"""Which RWKV version a state dict holds, and the key/shape table each version must match.

Detection reads BlinkDL key names (every loader maps its format to them first), with the markers of
the version registry (rwkv_export/versions/):
    att.r_k / att.x_rwkvag / att.w0   -> 7
    att.time_maa_x                    -> 6
    att.ln_x                          -> 5.2 with att.gate, else 5.1
    otherwise                         -> 4
Every version loads and runs as a torch reference (stage 2) and exports to ONNX (EXPORT_VERSIONS).
Each block's key table is the registry entry's `layer_shapes` (rwkv_export/versions/rwkv4.py ..
rwkv7.py, following ../shared/spec/RWKV4.md .. RWKV7.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.validate import check_keys, check_nonempty, check_rank
from rwkv_export.errors import RwkvExportError
from rwkv_export.versions import KNOWN_VERSIONS, BlockShapes, detect_version, version_info

__all__ = ["EXPORT_VERSIONS", "KNOWN_VERSIONS", "detect_version", "expected_shapes", "infer_config", "require_supported"]

EXPORT_VERSIONS = KNOWN_VERSIONS  # WKV4 for 4; WKV5 for 5.1 / 5.2; WKV6; WKV7
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


def require_supported(version: str, where: str | None = None) -> None:
    """Refuse versions the export stage cannot handle yet (loading and the reference take all)."""
    if version not in EXPORT_VERSIONS:
        prefix = f"{where}: " if where else ""
        raise RwkvExportError(f"{prefix}export of RWKV-{version} is not supported yet; RWKV-{', '.join(EXPORT_VERSIONS)} only")


# --- key/shape tables ----------------------------------------------------------------------------


def _common_shapes(n_layer: int, c: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "emb.weight": (vocab, c),
        "blocks.0.ln0.weight": (c,),
        "blocks.0.ln0.bias": (c,),
        "ln_out.weight": (c,),
        "ln_out.bias": (c,),
        "head.weight": (vocab, c),
    }
    for i in range(n_layer):
        for ln in ("ln1", "ln2"):
            shapes[f"blocks.{i}.{ln}.weight"] = (c,)
            shapes[f"blocks.{i}.{ln}.bias"] = (c,)
    return shapes


def expected_shapes(config: ModelConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required, optional) keys with shapes for `config` (any version: each block's from the registry)."""
    layer_shapes = version_info(config.version).layer_shapes
    shapes = _common_shapes(config.n_layer, config.n_embd, config.vocab_size)
    optional: dict[str, tuple[int, ...]] = {}
    for i in range(config.n_layer):
        required, extra = layer_shapes(config, i)
        shapes.update({f"blocks.{i}.{k}": s for k, s in required.items()})
        optional.update({f"blocks.{i}.{k}": s for k, s in extra.items()})
    return shapes, optional


# --- config inference ----------------------------------------------------------------------------


def infer_config(weights: Mapping[str, torch.Tensor], where: str, fmt: str = "pth") -> ModelConfig:
    """Read the version and hyper-parameters off the keys and shapes; check every key against them."""
    n_layer = check_keys(weights, where)  # before any table is built from what the keys claim
    check_nonempty(weights, where)  # every dimension >= 1: the registry's readers divide by them
    for needed in ("emb.weight", "blocks.0.ffn.key.weight"):
        if needed not in weights:
            raise RwkvExportError(f"{where}: not an RWKV checkpoint: key '{needed}' is missing")
    version = detect_version(weights)
    vocab, n_embd = check_rank(weights, "emb.weight", 2, where)
    ffn = check_rank(weights, "blocks.0.ffn.key.weight", 2, where)[0]
    extra = _version_fields(version, weights, where, fmt)
    dtype = (
        _DTYPE_NAMES.get(weights["blocks.0.att.key.weight"].dtype, str(weights["blocks.0.att.key.weight"].dtype))
        if "blocks.0.att.key.weight" in weights
        else "float32"
    )
    config = ModelConfig(version, n_layer, n_embd, vocab, ffn, dtype, **extra)
    required, optional = expected_shapes(config)
    unknown = sorted(set(weights) - set(required) - set(optional), key=_natural)
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise RwkvExportError(f"{where}: unknown key '{unknown[0]}'{more} for an RWKV-{version} checkpoint")
    missing = sorted(set(required) - set(weights), key=_natural)
    if missing:
        raise RwkvExportError(f"{where}: RWKV-{version} key '{missing[0]}' is missing ({len(missing)} missing in all)")
    for key, tensor in weights.items():
        shape = required.get(key, optional.get(key))
        if tuple(tensor.shape) != shape:
            raise RwkvExportError(f"{where}: '{key}' has shape {list(tensor.shape)}, expected {list(shape or ())}")
        if not tensor.is_floating_point():
            raise RwkvExportError(f"{where}: '{key}' has dtype {tensor.dtype}, expected a floating-point tensor")
    return config


def _version_fields(version: str, weights: Mapping[str, torch.Tensor], where: str, fmt: str) -> dict[str, Any]:
    """The version's typed config fields (heads, head size, LoRA ranks, GroupNorm eps) from block 0's shapes."""
    info = version_info(version)
    fields = info.read_fields(BlockShapes({k: tuple(t.shape) for k, t in weights.items()}, where, version))
    return {**fields, "group_norm_eps": info.default_group_norm_eps(fmt)}


def _natural(key: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]
