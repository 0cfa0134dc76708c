"""Stage 2, model: the torch reference of each RWKV version, built from a loaded checkpoint.

`build_model(checkpoint, dtype)` picks the class for the checkpoint's version; every class offers
forward_sequence(tokens [B, T], state) and forward_step(tokens [B], state) over its state type:
`State` (RWKV-4: x_att, aa, bb, pp, x_ffn) or `MatrixState` (RWKV-5/6/7: x_att, wkv, x_ffn).
"""

from __future__ import annotations

import torch

from rwkv_export.checkpoint import Checkpoint
from rwkv_export.errors import RwkvExportError
from rwkv_export.model.matrix import (
    MATRIX_STATE_INITIAL,
    MATRIX_STATE_NAMES,
    MatrixRWKV,
    MatrixState,
    initial_matrix_state,
    random_matrix_state,
)
from rwkv_export.model.rwkv4 import DTYPES, RWKV4
from rwkv_export.model.rwkv5 import RWKV5
from rwkv_export.model.rwkv6 import RWKV6
from rwkv_export.model.rwkv7 import RWKV7
from rwkv_export.model.state import STATE_INITIAL, STATE_NAMES, State, initial_state, random_state

__all__ = [
    "DTYPES", "MATRIX_MODELS", "MATRIX_STATE_INITIAL", "MATRIX_STATE_NAMES", "MODELS", "MatrixRWKV", "MatrixState", "RWKV4", "RWKV5",
    "RWKV6", "RWKV7", "STATE_INITIAL", "STATE_NAMES", "State", "build_model", "check_tokens", "initial_matrix_state",
    "initial_state", "random_matrix_state", "random_state",
]  # fmt: skip

MATRIX_MODELS: dict[str, type[MatrixRWKV]] = {"5.1": RWKV5, "5.2": RWKV5, "6": RWKV6, "7": RWKV7}
MODELS: dict[str, type[RWKV4] | type[MatrixRWKV]] = {"4": RWKV4, **MATRIX_MODELS}


def build_model(
    checkpoint: Checkpoint, dtype: str = "float32", rescale_every: int | None = None, group_norm_eps: float | None = None
) -> RWKV4 | MatrixRWKV:
    """The reference for the checkpoint's version. group_norm_eps overrides the checkpoint's ln_x eps
    (config.extra["group_norm_eps"]: RWKV-5/6/7 only), e.g. 64e-5 to match the `rwkv` package on v5."""
    version = checkpoint.config.version
    if version == "4":
        if group_norm_eps is not None:
            raise RwkvExportError("group_norm_eps applies to RWKV-5/6/7 (ln_x GroupNorm); RWKV-4 has no GroupNorm")
        return RWKV4(checkpoint.config, checkpoint.weights, dtype=dtype, rescale_every=rescale_every).eval()
    cls = MATRIX_MODELS.get(version)
    if cls is None:
        raise RwkvExportError(f"no reference model for RWKV-{version} yet")
    return cls(checkpoint.config, checkpoint.weights, dtype=dtype, rescale_every=rescale_every, group_norm_eps=group_norm_eps).eval()


def check_tokens(tokens: torch.Tensor, vocab_size: int) -> None:
    """Refuse token ids outside [0, vocab) before they reach an embedding lookup."""
    if tokens.numel() == 0:
        raise RwkvExportError("no tokens to run (the prompt is empty)")
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bool(bad.any()):
        first = int(tokens[bad].flatten()[0])
        raise RwkvExportError(f"token id {first} is out of range for this model (vocab {vocab_size}: ids 0..{vocab_size - 1})")
