"""Stage 2, model: the torch reference of each RWKV version, built from a loaded checkpoint.

`build_model(checkpoint, dtype)` picks the class for the checkpoint's version; every class offers
forward_sequence(tokens [B, T], state) and forward_step(tokens [B], state) over one `State` type.
"""

from __future__ import annotations

import torch

from rwkv_export.checkpoint import Checkpoint
from rwkv_export.errors import RwkvExportError
from rwkv_export.model.rwkv4 import DTYPES, RWKV4
from rwkv_export.model.state import STATE_INITIAL, STATE_NAMES, State, initial_state, random_state

__all__ = ["DTYPES", "RWKV4", "STATE_INITIAL", "STATE_NAMES", "State", "build_model", "check_tokens", "initial_state", "random_state"]

MODELS = {"4": RWKV4}


def build_model(checkpoint: Checkpoint, dtype: str = "float32", rescale_every: int | None = None) -> RWKV4:
    cls = MODELS.get(checkpoint.config.version)
    if cls is None:
        raise RwkvExportError(f"no reference model for RWKV-{checkpoint.config.version} yet")
    return cls(checkpoint.config, checkpoint.weights, dtype=dtype, rescale_every=rescale_every).eval()


def check_tokens(tokens: torch.Tensor, vocab_size: int) -> None:
    """Refuse token ids outside [0, vocab) before they reach an embedding lookup."""
    if tokens.numel() == 0:
        raise RwkvExportError("no tokens to run (the prompt is empty)")
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bool(bad.any()):
        first = int(tokens[bad].flatten()[0])
        raise RwkvExportError(f"token id {first} is out of range for this model (vocab {vocab_size}: ids 0..{vocab_size - 1})")
