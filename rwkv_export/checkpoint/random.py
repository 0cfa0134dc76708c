"""Random RWKV checkpoints (v4, v5.1, v5.2, v6, v7) with the scales of trained ones, so logits are not flat.

Used by tests, benchmarks and `rwkv-export make-checkpoint`. Scales follow RWKV-LM's init where it
matters for numerics (the time_decay spread over channels, time_first near log 0.3, mixes in
(0, 1); v5/v6 decays exp(-exp(-6 .. -1)), v7's w0 in -6.5 .. -1.5) and give matrices unit-gain
fan-in scaling, so activations and logits span several units. LoRA matrices get enough gain to
move the data-dependent mixes and decays (at RWKV-LM's init they are ~0 and would test nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.versions import expected_shapes
from rwkv_export.versions import version_info

DEFAULT_169M = {"n_layer": 12, "n_embd": 768, "vocab_size": 50277}


class _Draw:
    """The seeded float64 draws every init rule takes from, in key order."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.g, dtype=torch.float64) * std + mean

    def uniform(self, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=self.g, dtype=torch.float64) * (hi - lo) + lo

    def spread(self, shape: tuple[int, ...], lo: float, hi: float, depth: float) -> torch.Tensor:
        """RWKV-LM's decay init: lo .. hi over channels, curved by depth, plus noise."""
        n = int(torch.tensor(shape).prod())
        ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
        return (lo + (hi - lo) * ramp ** (0.7 + 1.3 * depth)).reshape(shape) + self.normal(shape, 0.1)


def _v4_time_first(shape: tuple[int, ...], depth: float, d: _Draw) -> torch.Tensor:
    zigzag = torch.tensor([((i + 1) % 3 - 1) * 0.5 for i in range(shape[0])], dtype=torch.float64)
    return math.log(0.3) + zigzag + d.normal(shape, 0.1)


# Where a version's parameter of the same name means something else, its own rule (by parameter name):
# RWKV-4's time_decay spreads over -5 .. 3 (RWKV-LM's v4 init) and its time_first is log 0.3 plus a
# zigzag over channels; 5.1's time_first is the log of its per-head bonus (rule in _init).
VERSION_RULES: dict[str, dict[str, Callable[[tuple[int, ...], float, _Draw], torch.Tensor]]] = {
    "4": {"time_decay": lambda shape, depth, d: d.spread(shape, -5.0, 3.0, depth), "time_first": _v4_time_first},
}


def _random_config(
    version: str, n_layer: int, n_embd: int, vocab_size: int, ffn_size: int | None, head_size: int, lora: int, dtype: torch.dtype
) -> ModelConfig:
    """The config of a random RWKV-`version` checkpoint with these sizes (fields from the registry)."""
    info = version_info(version)
    fields: dict[str, Any] = {}
    if info.has_heads:
        if n_embd % head_size:
            raise ValueError(f"head_size {head_size} does not divide n_embd {n_embd}")
        fields.update(n_head=n_embd // head_size, head_size=head_size, **info.random_config)
        fields.update(dict.fromkeys(info.lora_fields, lora))
        fields["group_norm_eps"] = info.default_group_norm_eps("pth")
    ffn = ffn_size or info.default_ffn_size(n_embd)
    return ModelConfig(version, n_layer, n_embd, vocab_size, ffn, str(dtype).replace("torch.", ""), **fields)


def random_weights(*args: Any, **kwargs: Any) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A random RWKV-`version` checkpoint ("4", "5.1", "5.2", "6" or "7") in BlinkDL form.

    head_size N divides n_embd (n_head = n_embd / N); `lora` is every LoRA rank (v6 mix and decay,
    v7 w/a/v/g); RWKV-4 has neither. v7 omits block 0's unused v0/v1/v2, as rwkv.cpp files do.
    Arguments as iter_random_weights (version, n_layer, n_embd, vocab_size, ffn_size, head_size=8,
    lora=16, seed=0, dtype=float32), which draws the same tensors one at a time.
    """
    config, tensors = iter_random_weights(*args, **kwargs)
    return config, dict(tensors)


def iter_random_weights(
    version: str,
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    ffn_size: int | None = None,
    head_size: int = 8,
    lora: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[ModelConfig, Iterator[tuple[str, torch.Tensor]]]:
    """random_weights one tensor at a time, in key order (the same draws): (config, (key, tensor) ...),
    so a checkpoint of any size is written in one tensor's memory."""
    config = _random_config(version, n_layer, n_embd, vocab_size, ffn_size, head_size, lora, dtype)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        draw = _Draw(seed)
        rules = VERSION_RULES.get(version, {})
        required, _ = expected_shapes(config)
        for key, shape in required.items():
            layer = int(key.split(".")[1]) if key.startswith("blocks.") else 0
            depth = layer / max(n_layer - 1, 1)  # 0 .. 1, as RWKV-LM's ratio_0_to_1
            name = key.rsplit(".", 1)[-1] if ".att." in key or ".ffn." in key else key
            rule = rules.get(name)
            t = rule(shape, depth, draw) if rule else _init(key, name, shape, depth, n_embd, draw)
            yield key, t.to(dtype)

    return config, tensors()


def _init(key: str, name: str, shape: tuple[int, ...], depth: float, c: int, d: _Draw) -> torch.Tensor:
    """The random init of one tensor, by its key (scales in the module docstring)."""
    if key == "emb.weight":
        return d.normal(shape, 0.5)
    if key.endswith("ln_x.weight"):
        return d.uniform(shape, 0.2, 1.0)
    if key.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight")):
        return d.normal(shape, 0.1, 1.0)
    if key.endswith(".bias"):
        return d.normal(shape, 0.05)
    if name.startswith(("time_mix_", "time_maa_")) and shape[:2] == (1, 1) or name.startswith("x_"):
        return d.uniform(shape, 0.05, 0.95)
    if name in SCALAR_RULES:
        return SCALAR_RULES[name](shape, depth, d)
    if name in ("time_maa_w1", "time_decay_w1", "w1", "a1", "v1", "g1"):
        return d.normal(shape, 0.5 / math.sqrt(c))
    if name == "time_maa_w2":
        return d.normal(shape, 0.5 / math.sqrt(shape[1]))
    if name in ("time_decay_w2", "w2", "a2", "v2"):
        return d.normal(shape, 0.5 / math.sqrt(shape[0]))
    if name == "g2":
        return d.normal(shape, 1.0 / math.sqrt(shape[0]))
    if key.endswith(("att.output.weight", "ffn.value.weight")):
        return d.normal(shape, 0.5 / math.sqrt(shape[1]))
    if key == "head.weight":
        return d.normal(shape, 2.0 / math.sqrt(c))
    if key.endswith(".weight") and len(shape) == 2:  # key / value / receptance / gate
        return d.normal(shape, 1.0 / math.sqrt(shape[1]))
    raise AssertionError(f"no random init for '{key}'")


SCALAR_RULES: dict[str, Callable[[tuple[int, ...], float, _Draw], torch.Tensor]] = {
    "time_decay": lambda shape, depth, d: d.spread(shape, -6.0, -1.0, depth),
    "time_first": lambda shape, depth, d: d.normal(shape, 0.3, math.log(0.5)),  # 5.1: bonus exp(time_first)
    "time_faaaa": lambda shape, depth, d: d.normal(shape, 0.3, 0.3),
    "w0": lambda shape, depth, d: d.spread(shape, -6.5, -1.5, depth),
    "a0": lambda shape, depth, d: d.normal(shape, 0.5),
    "v0": lambda shape, depth, d: d.normal(shape, 0.3, 1.0),
    "k_k": lambda shape, depth, d: d.normal(shape, 0.05, 0.85),
    "k_a": lambda shape, depth, d: d.normal(shape, 0.05, 1.0),
    "r_k": lambda shape, depth, d: d.normal(shape, 0.1),
}
