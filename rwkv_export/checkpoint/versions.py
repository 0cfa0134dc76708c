"""Which RWKV version a state dict holds, and the key/shape table each version must match.

Detection reads BlinkDL key names (every loader maps its format to them first):
    att.r_k / att.x_rwkvag / att.w0   -> 7
    att.time_maa_x                    -> 6
    att.ln_x                          -> 5.2 with att.gate, else 5.1
    otherwise                         -> 4
Every version loads and runs as a torch reference (stage 2) and exports to ONNX (EXPORT_VERSIONS).
Tables follow ../shared/spec/RWKV4.md .. RWKV7.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.validate import check_keys, check_nonempty, check_rank
from rwkv_export.errors import RwkvExportError

KNOWN_VERSIONS = ("4", "5.1", "5.2", "6", "7")
EXPORT_VERSIONS = KNOWN_VERSIONS  # WKV4 for 4; WKV5 for 5.1 / 5.2; WKV6; WKV7
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}

# GroupNorm eps of the attention output (ln_x), a property of the checkpoint (RWKV5.md "GroupNorm eps"):
# RWKV-LM applied ln_x to y / head_size_divisor (8) with eps 1e-5 from 5.2 on (effective 64e-5);
# the gateless 5.1 previews normalised raw y with eps 1e-5; rwkv.cpp runs every 5.x file with 1e-5
# (its tiny files' expected logits need it); v6 and v7 use 64e-5 everywhere.
GROUP_NORM_EPS = {"5.1": 1e-5, "5.2": 64e-5, "6": 64e-5, "7": 64e-5}
RWKVCPP_V5_GROUP_NORM_EPS = 1e-5


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


def require_supported(version: str, where: str | None = None) -> None:
    """Refuse versions the export stage cannot handle yet (loading and the reference take all)."""
    if version not in EXPORT_VERSIONS:
        prefix = f"{where}: " if where else ""
        raise RwkvExportError(f"{prefix}export of RWKV-{version} is not supported yet; RWKV-{', '.join(EXPORT_VERSIONS)} only")


def default_group_norm_eps(version: str, fmt: str) -> float | None:
    """The documented ln_x eps for a checkpoint of `version` stored in format `fmt` (None for v4)."""
    if version in ("5.1", "5.2") and fmt.startswith("rwkvcpp"):
        return RWKVCPP_V5_GROUP_NORM_EPS
    return GROUP_NORM_EPS.get(version)


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


def v4_expected_shapes(n_layer: int, n_embd: int, vocab: int, ffn: int) -> dict[str, tuple[int, ...]]:
    """Every key of an RWKV-4 state dict in BlinkDL naming, with its shape (../shared/spec/RWKV4.md)."""
    c, f = n_embd, ffn
    shapes = _common_shapes(n_layer, c, vocab)
    for i in range(n_layer):
        p = f"blocks.{i}."
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


def expected_shapes(config: ModelConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required, optional) keys with shapes for `config` (any version)."""
    v, L, c, f = config.version, config.n_layer, config.n_embd, config.ffn_size
    if v == "4":
        return v4_expected_shapes(L, c, config.vocab_size, f), {}
    x = config.extra
    h, n = x["n_head"], x["head_size"]
    a = h * n  # dim_att
    shapes = _common_shapes(L, c, config.vocab_size)
    optional: dict[str, tuple[int, ...]] = {}
    mix = (1, 1, c)
    for i in range(L):
        p = f"blocks.{i}."
        shapes.update({p + "att.ln_x.weight": (a,), p + "att.ln_x.bias": (a,), p + "ffn.key.weight": (f, c), p + "ffn.value.weight": (c, f)})
        for m in ("key", "value", "receptance"):
            shapes[p + f"att.{m}.weight"] = (a, c)
        shapes[p + "att.output.weight"] = (c, a)
        if v in ("5.1", "5.2"):
            per = (h,) if x["per_head_decay"] else (h, n)
            shapes.update({p + "att.time_decay": per, p + f"att.{x['bonus_key']}": per})
            for m in ("k", "v", "r") + (("g",) if v == "5.2" else ()):
                shapes[p + f"att.time_mix_{m}"] = mix
            shapes.update({p + "ffn.time_mix_k": mix, p + "ffn.time_mix_r": mix, p + "ffn.receptance.weight": (c, c)})
            if v == "5.2":
                shapes[p + "att.gate.weight"] = (a, c)
        elif v == "6":
            dm, dw = x["lora_mix"], x["lora_decay"]
            for m in "xwkvrg":
                shapes[p + f"att.time_maa_{m}"] = mix
            shapes.update({
                p + "att.time_maa_w1": (c, 5 * dm), p + "att.time_maa_w2": (5, dm, c), p + "att.time_decay": (1, 1, a),
                p + "att.time_decay_w1": (c, dw), p + "att.time_decay_w2": (dw, a), p + "att.time_faaaa": (h, n),
                p + "att.gate.weight": (a, c), p + "ffn.time_maa_k": mix, p + "ffn.time_maa_r": mix,
                p + "ffn.receptance.weight": (c, c),
            })  # fmt: skip
            optional[p + "att.time_state"] = (h, n, n)
        elif v == "7":
            for m in "rwkvag":
                shapes[p + f"att.x_{m}"] = mix
            for lora, rank in (("w", x["lora_decay"]), ("a", x["lora_a"]), ("v", x["lora_v"]), ("g", x["lora_gate"])):
                table = optional if (lora == "v" and i == 0) else shapes  # block 0 never uses v0..v2
                if lora != "g":
                    table[p + f"att.{lora}0"] = mix
                table[p + f"att.{lora}1"] = (c, rank)
                table[p + f"att.{lora}2"] = (rank, c)
            shapes.update({p + "att.k_k": mix, p + "att.k_a": mix, p + "att.r_k": (h, n), p + "ffn.x_k": mix})
    return shapes, optional


# --- config inference ----------------------------------------------------------------------------


def infer_config(weights: Mapping[str, torch.Tensor], where: str, fmt: str = "pth") -> ModelConfig:
    """Read the version and hyper-parameters off the keys and shapes; check every key against them."""
    n_layer = check_keys(weights, where)  # before any table is built from what the keys claim
    check_nonempty(weights, where)  # every dimension >= 1: the version readers divide by them
    for needed in ("emb.weight", "blocks.0.ffn.key.weight"):
        if needed not in weights:
            raise RwkvExportError(f"{where}: not an RWKV checkpoint: key '{needed}' is missing")
    version = detect_version(weights)
    vocab, n_embd = check_rank(weights, "emb.weight", 2, where)
    ffn = check_rank(weights, "blocks.0.ffn.key.weight", 2, where)[0]
    extra = _version_extra(version, weights, where, fmt)
    dtype = _DTYPE_NAMES.get(weights["blocks.0.att.key.weight"].dtype, str(weights["blocks.0.att.key.weight"].dtype)) \
        if "blocks.0.att.key.weight" in weights else "float32"
    config = ModelConfig(version, n_layer, n_embd, vocab, ffn, dtype, extra)
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


def infer_v4_config(weights: Mapping[str, torch.Tensor], where: str) -> ModelConfig:
    """RWKV-4 only (the historical entry point): refuses other versions by name."""
    version = detect_version(weights)
    if version != "4":
        raise RwkvExportError(f"{where}: this is an RWKV-{version} checkpoint, expected RWKV-4")
    return infer_config(weights, where)


def _version_extra(version: str, weights: Mapping[str, torch.Tensor], where: str, fmt: str) -> dict[str, object]:
    """Heads, head size, LoRA ranks and the GroupNorm eps, from block 0's shapes."""
    if version == "4":
        return {}
    p = "blocks.0.att."

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        if p + key not in weights:
            raise RwkvExportError(f"{where}: RWKV-{version} key '{p + key}' is missing")
        return check_rank(weights, p + key, ndim, where)

    dim_att = shape("key.weight", 2)[0]
    extra: dict[str, object] = {}
    if version in ("5.1", "5.2"):
        decay = weights.get(p + "time_decay")
        if decay is None or decay.dim() not in (1, 2) or decay.numel() == 0:
            raise RwkvExportError(f"{where}: RWKV-{version} needs '{p}time_decay' shaped [H] or [H, N] (H, N >= 1)")
        h = decay.shape[0]
        if dim_att % h:
            raise RwkvExportError(f"{where}: dim_att {dim_att} is not a multiple of the {h} heads of '{p}time_decay'")
        bonus = "time_faaaa" if p + "time_faaaa" in weights else "time_first"
        extra = {"n_head": h, "head_size": dim_att // h, "per_head_decay": decay.dim() == 1, "bonus_key": bonus}
    else:
        head_key = "time_faaaa" if version == "6" else "r_k"
        h, n = shape(head_key, 2)
        if h * n != dim_att:
            raise RwkvExportError(
                f"{where}: '{p}{head_key}' has shape {[h, n]}: heads x head size must equal dim_att {dim_att} (att.key.weight rows)"
            )
        extra = {"n_head": h, "head_size": n}
        if version == "6":
            extra.update(lora_mix=shape("time_maa_w2", 3)[1], lora_decay=shape("time_decay_w1", 2)[1])
        else:
            lora_v = shape("v1", 2)[1] if p + "v1" in weights else _v7_lora_v(weights)
            extra.update(lora_decay=shape("w1", 2)[1], lora_a=shape("a1", 2)[1], lora_v=lora_v, lora_gate=shape("g1", 2)[1])
    extra["group_norm_eps"] = default_group_norm_eps(version, fmt)
    return extra


def _v7_lora_v(weights: Mapping[str, torch.Tensor]) -> int:
    v1 = weights.get("blocks.1.att.v1")
    return int(v1.shape[1]) if v1 is not None and v1.dim() == 2 else 0


def _natural(key: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]
