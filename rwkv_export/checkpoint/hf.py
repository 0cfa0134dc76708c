"""transformers `RwkvForCausalLM` directories: config.json + weights with Hugging Face key names.

The mapping to BlinkDL names is a fixed rename (transformers' own converter does the inverse):
    rwkv.embeddings -> emb, rwkv.blocks.0.pre_ln -> blocks.0.ln0, attention -> att,
    feed_forward -> ffn, time_mix_key/value/receptance -> time_mix_k/v/r, rwkv.ln_out -> ln_out.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.validate import json_int, read_json_object
from rwkv_export.errors import RwkvExportError

_HF_TO_BLINK = [
    ("rwkv.embeddings.", "emb."),
    ("rwkv.blocks.0.pre_ln.", "blocks.0.ln0."),
    ("rwkv.blocks.", "blocks."),
    (".attention.", ".att."),
    (".feed_forward.", ".ffn."),
    ("time_mix_key", "time_mix_k"),
    ("time_mix_value", "time_mix_v"),
    ("time_mix_receptance", "time_mix_r"),
    ("rwkv.ln_out.", "ln_out."),
]
_OTHER_MODEL_TYPES = {"rwkv5": "5", "rwkv6": "6", "rwkv7": "7"}


def hf_to_blink(key: str) -> str:
    for old, new in _HF_TO_BLINK:
        key = key.replace(old, new)
    return key


def blink_to_hf(key: str) -> str:
    if key.startswith("emb."):
        return "rwkv.embeddings." + key[len("emb.") :]
    if key.startswith("head."):
        return key
    key = key.replace(".ln0.", ".pre_ln.").replace(".att.", ".attention.").replace(".ffn.", ".feed_forward.")
    key = re.sub(r"time_mix_([kvr])$", lambda m: "time_mix_" + {"k": "key", "v": "value", "r": "receptance"}[m.group(1)], key)
    return "rwkv." + key


def is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_hf_dir(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Return (BlinkDL-named tensors, config.json). Refuses other model types by name."""
    from rwkv_export.checkpoint import read_tensor_file

    config = read_json_object(path / "config.json")
    model_type = str(config.get("model_type", ""))[:40]
    if model_type in _OTHER_MODEL_TYPES:
        # RWKV/v5-v7 hub repositories need trust_remote_code and their own key names: not read here.
        raise RwkvExportError(
            f"{path}: this is an RWKV-{_OTHER_MODEL_TYPES[model_type]} checkpoint in a Hugging Face directory (model_type "
            f"'{model_type}', remote code; transformers has no class for it): load the BlinkDL .pth or .safetensors instead"
        )
    if model_type != "rwkv":
        raise RwkvExportError(f"{path}: config.json has model_type '{model_type}', expected 'rwkv' (RwkvForCausalLM)")
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise RwkvExportError(f"{path}: no weights found (expected model*.safetensors or pytorch_model*.bin)")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        part = read_tensor_file(file)  # stats the file first: a FIFO is refused, never opened
        twice = sorted(set(part) & set(tensors))
        if twice:
            raise RwkvExportError(f"{file}: key '{twice[0]}' is also in another weights file of {path}")
        tensors.update(part)
    blink = {hf_to_blink(k): v for k, v in tensors.items()}
    if len(blink) != len(tensors):
        raise RwkvExportError(f"{path}: two Hugging Face keys map to the same RWKV tensor name")
    return blink, config


# config.json field -> the ModelConfig attribute it must equal (RWKV-4: attention width = n_embd)
_CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "n_embd",
    "attention_hidden_size": "n_embd",
    "intermediate_size": "ffn_size",
    "num_hidden_layers": "n_layer",
}


def check_config(config: dict[str, object], model: ModelConfig, where: str) -> None:
    """config.json's sizes, where given, must be those of the weights."""
    for field, attr in _CONFIG_FIELDS.items():
        value = json_int(config, field, where)
        if value is not None and value != getattr(model, attr):
            raise RwkvExportError(f"{where}: '{field}' is {value} but the weights have {attr} {getattr(model, attr)}")


def hf_config(n_layer: int, n_embd: int, vocab: int, ffn: int) -> dict[str, object]:
    return {
        "architectures": ["RwkvForCausalLM"],
        "model_type": "rwkv",
        "vocab_size": vocab,
        "hidden_size": n_embd,
        "attention_hidden_size": n_embd,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layer,
        "context_length": 1024,
        "layer_norm_epsilon": 1e-5,
        "rescale_every": 6,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }
