"""Shared fixtures: seeded random checkpoints and the read-only ../shared tiny trained models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rwkv_export.checkpoint import Checkpoint, save_checkpoint
from rwkv_export.checkpoint.random import random_weights

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RWKV_EXPORT_SHARED", REPO.parent / "shared"))
TINY = SHARED / "models" / "rwkv-cpp-tiny"
TOKENIZER_20B = SHARED / "tokenizers" / "20B_tokenizer.json"

requires_shared = pytest.mark.skipif(
    not TINY.is_dir(), reason=f"needs the tiny trained models in {TINY} (../shared is absent in this clone)"
)


def tiny_model(stem: str, precision: str = "FP32") -> Path:
    return TINY / f"tiny-rwkv-{stem}-{precision}.bin"


def make_checkpoint(
    path: Path, layers: int = 3, embd: int = 64, vocab: int = 97, ffn: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    config, weights = random_weights("4", layers, embd, vocab, ffn, seed=seed, dtype=dtype)
    save_checkpoint(Checkpoint(config, weights, "random", path), path)
    return path


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer, 64-wide, vocab-97 random RWKV-4 checkpoint (.pth), shared by the session."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "random-3x64.pth")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Small matrices: intra-op threads only add sync cost (x100 on a loaded 2-core machine). Modules of
    many tiny torch calls opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
