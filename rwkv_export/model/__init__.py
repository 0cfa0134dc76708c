"""Stage 2, model: the torch reference of each RWKV version, built from a loaded checkpoint.

`build_model(checkpoint, dtype)` builds the class the version registry names (rwkv_export/versions/);
every class is an `RWKVModel` (base.py: one skeleton, one block function per version) offering
forward_sequence(tokens [B, T], state) and forward_step(tokens [B], state) over the version's state:
`ChannelState` (RWKV-4: x_att, aa, bb, pp, x_ffn) or `HeadState` (RWKV-5/6/7: x_att, wkv, x_ffn).
"""

from __future__ import annotations

import importlib

import torch

from rwkv_export.checkpoint import Checkpoint
from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.errors import RwkvExportError, check_token_ids
from rwkv_export.model.base import RWKVModel
from rwkv_export.model.common import DTYPES
from rwkv_export.model.rwkv4 import RWKV4
from rwkv_export.model.rwkv5 import RWKV5
from rwkv_export.model.rwkv6 import RWKV6
from rwkv_export.model.rwkv7 import RWKV7
from rwkv_export.model.state import OUTPUT_SUFFIX, ChannelState, HeadState, ModelState, initial_state, state_type
from rwkv_export.versions import version_info

__all__ = [
    "DTYPES", "OUTPUT_SUFFIX", "RWKV4", "RWKV5", "RWKV6", "RWKV7", "ChannelState", "HeadState", "ModelState", "RWKVModel",
    "build_model", "check_tokens", "initial_state", "model_class", "random_state", "state_type",
]  # fmt: skip


def model_class(version: str) -> type[RWKVModel]:
    """The reference class the registry names for `version`."""
    module, _, name = version_info(version).model.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, RWKVModel), f"{module}:{name} is not an RWKVModel"
    return cls


def build_model(
    checkpoint: Checkpoint, dtype: str = "float32", rescale_every: int | None = None, group_norm_eps: float | None = None
) -> RWKVModel:
    """The reference for the checkpoint's version. group_norm_eps overrides the checkpoint's ln_x eps
    (config.group_norm_eps: RWKV-5/6/7 only), e.g. 64e-5 to match the `rwkv` package on v5."""
    cls = model_class(checkpoint.config.version)
    return cls(checkpoint.config, checkpoint.weights, dtype=dtype, rescale_every=rescale_every, group_norm_eps=group_norm_eps).eval()


def random_state(config: ModelConfig, batch: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelState:
    """A plausible non-initial state of `config`'s version for tests (the model class's recipe)."""
    return model_class(config.version).random_state(config, batch, seed, dtype)


def check_tokens(tokens: torch.Tensor, vocab_size: int) -> None:
    """Refuse token ids outside [0, vocab) before they reach an embedding lookup."""
    if tokens.numel() == 0:
        raise RwkvExportError("no tokens to run (the prompt is empty)")
    check_token_ids(tokens.detach().cpu().numpy(), vocab_size)
