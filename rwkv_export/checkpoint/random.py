"""Random RWKV-4 checkpoints with the scales of trained ones, so logits are not flat.

Used by tests, benchmarks and `rwkv-export make-checkpoint`. Scales follow RWKV-LM's init where it
matters for numerics (the time_decay spread over channels, time_first near log 0.3, mixes in
(0, 1)) and give matrices unit-gain fan-in scaling, so activations and logits span several units.
"""

from __future__ import annotations

import math

import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.versions import v4_expected_shapes

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
