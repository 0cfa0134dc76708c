"""RWKV-6 ("Finch", x060, ../shared/spec/RWKV6.md): heads with key-major WKV6 state, data-dependent
token shift (maa LoRA) and decay (decay LoRA), GroupNorm eps 64e-5, an optional time_state."""

from __future__ import annotations

from typing import Any

from rwkv_export.versions.info import HEAD_STATE, BlockShapes, Shapes, VersionInfo, head_layer_shapes, heads_from


def layer_shapes(config: Any, layer: int) -> tuple[Shapes, Shapes]:
    c, h, n = config.n_embd, config.n_head, config.head_size
    a, dm, dw, mix = h * n, config.lora_mix, config.lora_decay, (1, 1, config.n_embd)
    shapes = head_layer_shapes(config)
    for m in "xwkvrg":
        shapes[f"att.time_maa_{m}"] = mix
    shapes.update({
        "att.time_maa_w1": (c, 5 * dm), "att.time_maa_w2": (5, dm, c), "att.time_decay": (1, 1, a),
        "att.time_decay_w1": (c, dw), "att.time_decay_w2": (dw, a), "att.time_faaaa": (h, n),
        "att.gate.weight": (a, c), "ffn.time_maa_k": mix, "ffn.time_maa_r": mix, "ffn.receptance.weight": (c, c),
    })  # fmt: skip
    return shapes, {"att.time_state": (h, n, n)}


def read_fields(s: BlockShapes) -> dict[str, Any]:
    return {**heads_from(s, "time_faaaa"), "lora_mix": s.need("time_maa_w2", 3)[1], "lora_decay": s.need("time_decay_w1", 2)[1]}


def ffn_size(n_embd: int) -> int:
    return int(3.5 * n_embd) // 32 * 32 or 4 * n_embd  # RWKV-LM x060's dim_ffn


RWKV6 = VersionInfo(
    "6", "rwkv_export.model.rwkv6:RWKV6", "WKV6", HEAD_STATE, markers=(("att.time_maa_x",),),
    layer_shapes=layer_shapes, read_fields=read_fields,
    config_fields=("n_head", "head_size", "lora_mix", "lora_decay", "group_norm_eps"),
    default_ffn_size=ffn_size, group_norm_eps=64e-5,
)  # fmt: skip
