"""Random checkpoints of any version from user-given sizes, checked first (`make-checkpoint`, `bench`).

random.py builds the tensors and trusts its arguments (a head size that does not divide the width is
a ValueError, a LoRA rank on RWKV-5 is silently ignored). Here the sizes come from a command line, so
every combination that cannot describe a model is refused with a one-line RwkvExportError that names
the option, before any tensor is drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.random import iter_random_weights
from rwkv_export.errors import RwkvExportError
from rwkv_export.versions import version_info

DEFAULT_HEAD_SIZE = 64  # every released RWKV-5/6/7 model
# One rank for every LoRA (v6 mix and decay, v7 w/a/v/g). The released small models use 32 to 128
# (RWKV-LM: v6 mix 32, decay 64; v7 at 768 wide: decay 64, a 64, v 32, gate 128); 32 is their low end.
DEFAULT_LORA = 32


def random_checkpoint(*args: Any, **kwargs: Any) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, weights) of a random RWKV-`version` (random_checkpoint_stream's arguments; head_size /
    lora None: the defaults above)."""
    config, tensors = random_checkpoint_stream(*args, **kwargs)
    return config, dict(tensors)


def random_checkpoint_stream(
    version: str,
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    ffn_size: int | None = None,
    head_size: int | None = None,
    lora: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[ModelConfig, Iterator[tuple[str, torch.Tensor]]]:
    """random_checkpoint one tensor at a time (the same tensors): (config, (key, tensor) ...)."""
    head_size, lora = check_sizes(version, n_embd, head_size, lora)
    return iter_random_weights(
        version, n_layer, n_embd, vocab_size, ffn_size, head_size or DEFAULT_HEAD_SIZE, lora or DEFAULT_LORA, seed, dtype
    )


def check_sizes(version: str, n_embd: int, head_size: int | None, lora: int | None) -> tuple[int | None, int | None]:
    """Refuse sizes that do not apply to `version` or do not fit; return (head_size, lora) with defaults filled."""
    info = version_info(version)  # unknown versions: the one-line error naming the known ones
    if not info.has_heads:
        if head_size is not None:
            raise RwkvExportError(f"--head-size applies to RWKV-5/6/7 (RWKV-{version} has no heads)")
        if lora is not None:
            raise RwkvExportError(f"--lora applies to RWKV-6 and RWKV-7 (RWKV-{version} has no LoRA matrices)")
        return None, None
    if lora is not None and not info.lora_fields:
        raise RwkvExportError(f"--lora applies to RWKV-6 and RWKV-7 (RWKV-{version} has no LoRA matrices)")
    head_size = head_size or DEFAULT_HEAD_SIZE
    if n_embd % head_size:
        raise RwkvExportError(
            f"width (n_embd) {n_embd} is not a multiple of the head size {head_size}: RWKV-{version} splits "
            "the width into heads of head-size channels (choose --head-size to divide it)"
        )
    return head_size, (lora or DEFAULT_LORA) if info.lora_fields else None
