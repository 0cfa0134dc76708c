"""RWKV-7 ("Goose", x070, ../shared/spec/RWKV7.md): heads with value-major WKV7 state, LoRAs for
decay (w), in-context rate (a), value residual (v) and gate (g); GroupNorm eps 64e-5; no float16
rescale. Block 0 never uses v0/v1/v2 (rwkv.cpp files omit them)."""

from __future__ import annotations

from typing import Any

from rwkv_export.versions.info import HEAD_STATE, BlockShapes, Shapes, VersionInfo, head_layer_shapes, heads_from


def layer_shapes(config: Any, layer: int) -> tuple[Shapes, Shapes]:
    c, mix = config.n_embd, (1, 1, config.n_embd)
    shapes, optional = head_layer_shapes(config), {}
    for m in "rwkvag":
        shapes[f"att.x_{m}"] = mix
    for lora, rank in (("w", config.lora_decay), ("a", config.lora_a), ("v", config.lora_v), ("g", config.lora_gate)):
        table = optional if (lora == "v" and layer == 0) else shapes  # block 0 never uses v0..v2
        if lora != "g":
            table[f"att.{lora}0"] = mix
        table[f"att.{lora}1"] = (c, rank)
        table[f"att.{lora}2"] = (rank, c)
    shapes.update({"att.k_k": mix, "att.k_a": mix, "att.r_k": (config.n_head, config.head_size), "ffn.x_k": mix})
    return shapes, optional


def read_fields(s: BlockShapes) -> dict[str, Any]:
    heads = heads_from(s, "r_k")
    v1 = s.get("v1", block=1)  # block 0's is optional; a 1-layer model without it has no v LoRA
    lora_v = s.need("v1", 2)[1] if s.get("v1") is not None else (v1[1] if v1 is not None and len(v1) == 2 else 0)
    return {**heads, "lora_decay": s.need("w1", 2)[1], "lora_a": s.need("a1", 2)[1], "lora_v": lora_v, "lora_gate": s.need("g1", 2)[1]}


RWKV7 = VersionInfo(
    "7", "rwkv_export.model.rwkv7:RWKV7", "WKV7", HEAD_STATE, markers=(("att.r_k",), ("att.x_rwkvag",), ("att.w0",)),
    layer_shapes=layer_shapes, read_fields=read_fields,
    config_fields=("n_head", "head_size", "lora_decay", "lora_a", "lora_v", "lora_gate", "group_norm_eps"),
    group_norm_eps=64e-5, float16_rescale_every=0, rwkv_package_v7=True,  # x070 has no float16 rescale
)  # fmt: skip
