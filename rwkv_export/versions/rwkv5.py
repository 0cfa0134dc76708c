"""RWKV-5.1 and 5.2 ("Eagle", ../shared/spec/RWKV5.md): heads with key-major WKV5 state, GroupNorm.

5.1 (the gateless previews) has a per-head decay [H] and its bonus as time_first (log of the bonus);
5.2 has [H, N] and time_faaaa, plus a gate. GroupNorm eps (RWKV5.md "GroupNorm eps"): RWKV-LM
applied ln_x to y / head_size_divisor (8) with eps 1e-5 from 5.2 on (effective 64e-5); the 5.1
previews normalised raw y with eps 1e-5; rwkv.cpp runs every 5.x file with 1e-5 (its tiny files'
expected logits need it).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from rwkv_export.versions.info import HEAD_STATE, BlockShapes, Shapes, VersionInfo, head_layer_shapes

FIELDS = ("n_head", "head_size", "per_head_decay", "bonus_key", "group_norm_eps")
RWKVCPP_EPS = {"rwkvcpp": 1e-5}
# 5.1 normalises raw y with eps 1e-5 (5.2+: effectively 64e-5): heads with a small spread divide the
# rounding error by a smaller std, so its half-precision error is ~3x the others' (measured 1.4e-2 / 9e-2).
V51_LOGITS_RTOL = {"float32": 1e-5, "float16": 3e-2, "bfloat16": 0.15}


def layer_shapes(config: Any, layer: int, gated: bool) -> tuple[Shapes, Shapes]:
    """gated: 5.2's time_mix_g and att.gate."""
    c, h, n = config.n_embd, config.n_head, config.head_size
    shapes = head_layer_shapes(config)
    per = (h,) if config.per_head_decay else (h, n)
    shapes.update({"att.time_decay": per, f"att.{config.bonus_key}": per})
    for m in ("k", "v", "r") + (("g",) if gated else ()):
        shapes[f"att.time_mix_{m}"] = (1, 1, c)
    shapes.update({"ffn.time_mix_k": (1, 1, c), "ffn.time_mix_r": (1, 1, c), "ffn.receptance.weight": (c, c)})
    if gated:
        shapes["att.gate.weight"] = (h * n, c)
    return shapes, {}


def read_fields(s: BlockShapes) -> dict[str, Any]:
    dim_att = s.need("key.weight", 2)[0]
    decay = s.get("time_decay")
    if decay is None or len(decay) not in (1, 2):
        raise s.fail(f"RWKV-{s.version} needs 'blocks.0.att.time_decay' shaped [H] or [H, N]")
    h = decay[0]
    if dim_att % h:
        raise s.fail(f"dim_att {dim_att} is not a multiple of the {h} heads of 'blocks.0.att.time_decay'")
    bonus = "time_faaaa" if s.get("time_faaaa") is not None else "time_first"
    return {"n_head": h, "head_size": dim_att // h, "per_head_decay": len(decay) == 1, "bonus_key": bonus}


RWKV51 = VersionInfo(
    "5.1", "rwkv_export.model.rwkv5:RWKV5", "WKV5", HEAD_STATE, markers=(("att.ln_x.weight",),),
    layer_shapes=partial(layer_shapes, gated=False), read_fields=read_fields, config_fields=FIELDS,
    random_config={"per_head_decay": True, "bonus_key": "time_first"}, group_norm_eps=1e-5, group_norm_eps_by_format=RWKVCPP_EPS,
    logits_rtol=V51_LOGITS_RTOL,
)  # fmt: skip
RWKV52 = VersionInfo(
    "5.2", "rwkv_export.model.rwkv5:RWKV5", "WKV5", HEAD_STATE, markers=(("att.ln_x.weight", "att.gate.weight"),),
    layer_shapes=partial(layer_shapes, gated=True), read_fields=read_fields, config_fields=FIELDS,
    random_config={"per_head_decay": False, "bonus_key": "time_faaaa"}, group_norm_eps=64e-5, group_norm_eps_by_format=RWKVCPP_EPS,
)  # fmt: skip
