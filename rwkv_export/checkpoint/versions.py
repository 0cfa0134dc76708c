"""Which RWKV version a state dict holds, and the v4 key/shape table it must match.

Detection reads BlinkDL key names (every loader maps its format to them first):
    att.r_k / att.x_rwkvag / att.w0   -> 7
    att.time_maa_x                    -> 6
    att.ln_x                          -> 5.2 with att.gate, else 5.1
    otherwise                         -> 4
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.errors import RwkvExportError

SUPPORTED_VERSIONS = ("4",)
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}


def detect_version(keys: Iterable[str]) -> str:
    keys = list(keys)

    def has(suffix: str) -> bool:
        return any(k.endswith(suffix) for k in keys)

    if has("att.r_k") or has("att.x_rwkvag") or has("att.w0"):
        return "7"
    if has("att.time_maa_x"):
        return "6"
    if has("att.ln_x.weight"):
        return "5.2" if has("att.gate.weight") else "5.1"
    return "4"


def require_supported(version: str, where: str) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise RwkvExportError(
            f"{where}: this is an RWKV-{version} checkpoint; rwkv-export supports RWKV-"
            f"{', '.join(SUPPORTED_VERSIONS)} so far (RWKV-{version} support is planned)"
        )


def v4_expected_shapes(n_layer: int, n_embd: int, vocab: int, ffn: int) -> dict[str, tuple[int, ...]]:
    """Every key of an RWKV-4 state dict in BlinkDL naming, with its shape (../shared/spec/RWKV4.md)."""
    c, f = n_embd, ffn
    shapes: dict[str, tuple[int, ...]] = {
        "emb.weight": (vocab, c),
        "blocks.0.ln0.weight": (c,),
        "blocks.0.ln0.bias": (c,),
        "ln_out.weight": (c,),
        "ln_out.bias": (c,),
        "head.weight": (vocab, c),
    }
    for i in range(n_layer):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            shapes[p + ln + ".weight"] = (c,)
            shapes[p + ln + ".bias"] = (c,)
        shapes[p + "att.time_decay"] = (c,)
        shapes[p + "att.time_first"] = (c,)
        for m in ("k", "v", "r"):
            shapes[p + f"att.time_mix_{m}"] = (1, 1, c)
        for m in ("key", "value", "receptance", "output"):
            shapes[p + f"att.{m}.weight"] = (c, c)
        shapes[p + "ffn.time_mix_k"] = (1, 1, c)
        shapes[p + "ffn.time_mix_r"] = (1, 1, c)
        shapes[p + "ffn.key.weight"] = (f, c)
        shapes[p + "ffn.receptance.weight"] = (c, c)
        shapes[p + "ffn.value.weight"] = (c, f)
    return shapes


def infer_v4_config(weights: Mapping[str, torch.Tensor], where: str) -> ModelConfig:
    """Read n_layer / n_embd / vocab / ffn off the shapes and check every key against them."""
    for needed in ("emb.weight", "blocks.0.ffn.key.weight"):
        if needed not in weights:
            raise RwkvExportError(f"{where}: not an RWKV checkpoint: key '{needed}' is missing")
    vocab, n_embd = weights["emb.weight"].shape
    ffn = weights["blocks.0.ffn.key.weight"].shape[0]
    layer_ids = {int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))}
    n_layer = max(layer_ids) + 1
    expected = v4_expected_shapes(n_layer, n_embd, vocab, ffn)
    unknown = sorted(set(weights) - set(expected))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise RwkvExportError(f"{where}: unknown key '{unknown[0]}'{more} for an RWKV-4 checkpoint")
    missing = sorted(set(expected) - set(weights), key=_natural)
    if missing:
        raise RwkvExportError(f"{where}: RWKV-4 key '{missing[0]}' is missing ({len(missing)} missing in all)")
    for key, shape in expected.items():
        found = tuple(weights[key].shape)
        if found != shape:
            raise RwkvExportError(f"{where}: '{key}' has shape {list(found)}, expected {list(shape)}")
    for key, tensor in weights.items():
        if not tensor.is_floating_point():
            raise RwkvExportError(f"{where}: '{key}' has dtype {tensor.dtype}, expected a floating-point tensor")
    dtype = _DTYPE_NAMES.get(weights["blocks.0.att.key.weight"].dtype, str(weights["blocks.0.att.key.weight"].dtype))
    return ModelConfig("4", n_layer, n_embd, vocab, ffn, dtype)


def _natural(key: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]
