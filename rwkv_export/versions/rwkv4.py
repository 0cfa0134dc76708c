"""RWKV-4 (../shared/spec/RWKV4.md): per-channel WKV state aa, bb, pp; no heads, no GroupNorm."""

from __future__ import annotations

from typing import Any

from rwkv_export.versions.info import SHIFT_DIMS, X_ATT, X_FFN, Shapes, StateTensor, VersionInfo

PP_INIT = -1e38  # the running max exponent starts at "minus infinity" (custom_ops/wkv4.py PP_INIT)


def layer_shapes(config: Any, layer: int) -> tuple[Shapes, Shapes]:
    c, f = config.n_embd, config.ffn_size
    shapes: Shapes = {"att.time_decay": (c,), "att.time_first": (c,)}
    for m in ("k", "v", "r"):
        shapes[f"att.time_mix_{m}"] = (1, 1, c)
    for m in ("key", "value", "receptance", "output"):
        shapes[f"att.{m}.weight"] = (c, c)
    shapes.update({"ffn.time_mix_k": (1, 1, c), "ffn.time_mix_r": (1, 1, c), "ffn.key.weight": (f, c),
                   "ffn.receptance.weight": (c, c), "ffn.value.weight": (c, f)})  # fmt: skip
    return shapes, {}


RWKV4 = VersionInfo(
    "4", "rwkv_export.model.rwkv4:RWKV4", "WKV4",
    state=(X_ATT, StateTensor("aa", SHIFT_DIMS), StateTensor("bb", SHIFT_DIMS), StateTensor("pp", SHIFT_DIMS, PP_INIT), X_FFN),
    markers=((),), layer_shapes=layer_shapes, transformers_class="RwkvForCausalLM",
)  # fmt: skip
