"""Random RWKV checkpoints (v4, v5.1, v5.2, v6, v7) with the scales of trained ones, so logits are not flat.

Used by tests, benchmarks and `rwkv-export make-checkpoint`. Scales follow RWKV-LM's init where it
matters for numerics (the time_decay spread over channels, time_first near log 0.3, mixes in
(0, 1); v5/v6 decays exp(-exp(-6 .. -1)), v7's w0 in -6.5 .. -1.5) and give matrices unit-gain
fan-in scaling, so activations and logits span several units. LoRA matrices get enough gain to
move the data-dependent mixes and decays (at RWKV-LM's init they are ~0 and would test nothing).
"""

from __future__ import annotations

import math

import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.versions import default_group_norm_eps, expected_shapes, v4_expected_shapes

DEFAULT_169M = dict(n_layer=12, n_embd=768, vocab_size=50277)


def random_v4_weights(
    n_layer: int, n_embd: int, vocab_size: int, ffn_size: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    ffn = ffn_size or 4 * n_embd
    g = torch.Generator().manual_seed(seed)
    c = n_embd

    def normal(shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float64) * std + mean

    def uniform(shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo

    weights: dict[str, torch.Tensor] = {}
    for key, shape in v4_expected_shapes(n_layer, c, vocab_size, ffn).items():
        layer = int(key.split(".")[1]) if key.startswith("blocks.") else 0
        depth = layer / max(n_layer - 1, 1)  # 0 .. 1, as RWKV-LM's ratio_0_to_1
        if key == "emb.weight":
            t = normal(shape, 0.5)
        elif key.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight")):
            t = normal(shape, 0.1, 1.0)
        elif key.endswith(".bias"):
            t = normal(shape, 0.05)
        elif key.endswith("time_decay"):
            h = torch.arange(c, dtype=torch.float64) / max(c - 1, 1)
            t = -5 + 8 * h ** (0.7 + 1.3 * depth) + normal(shape, 0.1)
        elif key.endswith("time_first"):
            zigzag = torch.tensor([((i + 1) % 3 - 1) * 0.5 for i in range(c)], dtype=torch.float64)
            t = math.log(0.3) + zigzag + normal(shape, 0.1)
        elif ".time_mix_" in key:
            t = uniform(shape, 0.05, 0.95)
        elif key.endswith(("att.output.weight", "ffn.value.weight")):
            t = normal(shape, 0.5 / math.sqrt(shape[1]))
        elif key == "head.weight":
            t = normal(shape, 2.0 / math.sqrt(c))
        else:  # key / value / receptance matrices
            t = normal(shape, 1.0 / math.sqrt(shape[1]))
        weights[key] = t.to(dtype)
    dtype_name = str(dtype).replace("torch.", "")
    return ModelConfig("4", n_layer, c, vocab_size, ffn, dtype_name), weights


def random_weights(
    version: str, n_layer: int, n_embd: int, vocab_size: int, ffn_size: int | None = None, head_size: int = 8,
    lora: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32,
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A random RWKV-`version` ("5.1", "5.2", "6" or "7") checkpoint in BlinkDL form.

    head_size N divides n_embd (n_head = n_embd / N); `lora` is every LoRA rank (v6 mix and decay,
    v7 w/a/v/g). v7 omits block 0's unused v0/v1/v2, as rwkv.cpp files do.
    """
    if version == "4":
        return random_v4_weights(n_layer, n_embd, vocab_size, ffn_size, seed, dtype)
    if n_embd % head_size:
        raise ValueError(f"head_size {head_size} does not divide n_embd {n_embd}")
    ffn = ffn_size or (4 * n_embd if version != "6" else int(3.5 * n_embd) // 32 * 32 or 4 * n_embd)
    h, c = n_embd // head_size, n_embd
    extra: dict[str, object] = {"n_head": h, "head_size": head_size}
    if version in ("5.1", "5.2"):
        per_head = version == "5.1"
        extra.update(per_head_decay=per_head, bonus_key="time_first" if per_head else "time_faaaa")
    elif version == "6":
        extra.update(lora_mix=lora, lora_decay=lora)
    else:
        extra.update(lora_decay=lora, lora_a=lora, lora_v=lora, lora_gate=lora)
    extra["group_norm_eps"] = default_group_norm_eps(version, "pth")
    dtype_name = str(dtype).replace("torch.", "")
    config = ModelConfig(version, n_layer, c, vocab_size, ffn, dtype_name, extra)
    g = torch.Generator().manual_seed(seed)

    def normal(shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float64) * std + mean

    def uniform(shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo

    def spread(shape: tuple[int, ...], lo: float, hi: float, depth: float) -> torch.Tensor:
        """RWKV-LM's decay init: lo .. hi over channels, curved by depth, plus noise."""
        n = int(torch.tensor(shape).prod())
        ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
        return (lo + (hi - lo) * ramp ** (0.7 + 1.3 * depth)).reshape(shape) + normal(shape, 0.1)

    weights: dict[str, torch.Tensor] = {}
    required, _ = expected_shapes(config)
    for key, shape in required.items():
        layer = int(key.split(".")[1]) if key.startswith("blocks.") else 0
        depth = layer / max(n_layer - 1, 1)
        name = key.rsplit(".", 1)[-1] if ".att." in key or ".ffn." in key else key
        if key == "emb.weight":
            t = normal(shape, 0.5)
        elif key.endswith("ln_x.weight"):
            t = uniform(shape, 0.2, 1.0)
        elif key.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight")):
            t = normal(shape, 0.1, 1.0)
        elif key.endswith(".bias"):
            t = normal(shape, 0.05)
        elif name == "time_decay":
            t = spread(shape, -6.0, -1.0, depth)
        elif name == "time_first":  # 5.1: bonus exp(time_first)
            t = normal(shape, 0.3, math.log(0.5))
        elif name == "time_faaaa":
            t = normal(shape, 0.3, 0.3)
        elif name.startswith(("time_mix_", "time_maa_")) and shape[:2] == (1, 1) or name.startswith("x_"):
            t = uniform(shape, 0.05, 0.95)
        elif name == "w0":
            t = spread(shape, -6.5, -1.5, depth)
        elif name == "a0":
            t = normal(shape, 0.5)
        elif name == "v0":
            t = normal(shape, 0.3, 1.0)
        elif name == "k_k":
            t = normal(shape, 0.05, 0.85)
        elif name == "k_a":
            t = normal(shape, 0.05, 1.0)
        elif name == "r_k":
            t = normal(shape, 0.1)
        elif name in ("time_maa_w1", "time_decay_w1", "w1", "a1", "v1", "g1"):
            t = normal(shape, 0.5 / math.sqrt(c))
        elif name == "time_maa_w2":
            t = normal(shape, 0.5 / math.sqrt(shape[1]))
        elif name in ("time_decay_w2", "w2", "a2", "v2"):
            t = normal(shape, 0.5 / math.sqrt(shape[0]))
        elif name == "g2":
            t = normal(shape, 1.0 / math.sqrt(shape[0]))
        elif key.endswith(("att.output.weight", "ffn.value.weight")):
            t = normal(shape, 0.5 / math.sqrt(shape[1]))
        elif key == "head.weight":
            t = normal(shape, 2.0 / math.sqrt(c))
        elif key.endswith(".weight") and len(shape) == 2:  # key / value / receptance / gate
            t = normal(shape, 1.0 / math.sqrt(shape[1]))
        else:
            raise AssertionError(f"no random init for '{key}'")
        weights[key] = t.to(dtype)
    return config, weights


def random_v5_weights(n_layer: int, n_embd: int, vocab_size: int, ffn_size: int | None = None, head_size: int = 8,
                      seed: int = 0, dtype: torch.dtype = torch.float32, version: str = "5.2") -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    return random_weights(version, n_layer, n_embd, vocab_size, ffn_size, head_size, seed=seed, dtype=dtype)


def random_v6_weights(n_layer: int, n_embd: int, vocab_size: int, ffn_size: int | None = None, head_size: int = 8,
                      lora: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    return random_weights("6", n_layer, n_embd, vocab_size, ffn_size, head_size, lora, seed, dtype)


def random_v7_weights(n_layer: int, n_embd: int, vocab_size: int, ffn_size: int | None = None, head_size: int = 16,
                      lora: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    return random_weights("7", n_layer, n_embd, vocab_size, ffn_size, head_size, lora, seed, dtype)
