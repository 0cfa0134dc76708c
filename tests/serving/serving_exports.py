"""Exports shared by the serving tests of one pytest session (cached under the session's basetemp,
so test modules reuse each other's exports instead of tracing the same graphs again)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rwkv_export.checkpoint import Checkpoint, save_checkpoint
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.export import export_checkpoint

# version -> (layers, embd, head_size, vocab) of the small random checkpoints
RANDOM_SHAPES = {"4": (2, 32, 8, 61), "5.2": (2, 32, 8, 61), "6": (2, 32, 8, 61), "7": (2, 32, 16, 61)}


def _root(factory: pytest.TempPathFactory) -> Path:
    root = factory.getbasetemp() / "serving-exports"
    root.mkdir(exist_ok=True)
    return root


def random_checkpoint(factory: pytest.TempPathFactory, version: str, seed: int = 3, time_state: bool = False) -> Path:
    """A small random checkpoint (.pth) of `version`; a v6 one may carry a time_state."""
    layers, embd, head, vocab = RANDOM_SHAPES[version]
    path = _root(factory) / f"random-v{version}-s{seed}{'-ts' if time_state else ''}.pth"
    if not path.exists():
        config, weights = random_weights(version, layers, embd, vocab, head_size=head, seed=seed)
        if time_state:
            g = torch.Generator().manual_seed(seed)
            for i in range(layers):  # value-major on disk, [H, N(v), N(k)]
                weights[f"blocks.{i}.att.time_state"] = torch.randn(embd // head, head, head, generator=g)
        save_checkpoint(Checkpoint(config, weights, "random", path), path)
    return path


def exported(factory: pytest.TempPathFactory, checkpoint: Path, dtype: str = "float32", all_logits: bool = False) -> Path:
    """The export of `checkpoint` (made once per session)."""
    out = _root(factory) / f"{checkpoint.stem}-{dtype}{'-all' if all_logits else ''}"
    if not (out / "manifest.json").is_file():
        export_checkpoint(checkpoint, out, dtype=dtype, all_logits=all_logits, force=True)
    return out
