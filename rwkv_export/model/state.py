"""The recurrent state contract shared by the reference models and every exported graph.

Every version's state is its two token shifts around its WKV op's state, in that order, float32 in
every graph (float64 in the oracle); names, shapes and initial values come from the version registry
(rwkv_export/versions/), graph outputs carry the same names with an `_out` suffix:
    x_att  [n_layer, batch, n_embd]   previous token's LN1 output (time-mix token shift)
    ...    the WKV op's state:
           ChannelState (RWKV-4): aa, bb [n_layer, batch, n_embd] numerator / denominator divided by
               exp(pp), pp the running max exponent (starts at -1e38), per channel
           HeadState (RWKV-5/6/7): wkv [n_layer, batch, n_head, N, N] one matrix per head, key-major
               S[h, i=k, j=v] for v5/v6, value-major S[h, i=v, j=k] for v7
    x_ffn  [n_layer, batch, n_embd]   previous token's LN2 output (channel-mix token shift)
Initial values are 0 except RWKV-4's pp (v6 checkpoints with `time_state` start from it: use
`model.initial_state(batch)`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from rwkv_export.versions import state_shapes, version_info

OUTPUT_SUFFIX = "_out"


class ChannelState(NamedTuple):
    """Token shifts plus RWKV-4's per-channel WKV accumulators."""

    x_att: torch.Tensor  # [L, B, C]
    aa: torch.Tensor  # [L, B, C]
    bb: torch.Tensor  # [L, B, C]
    pp: torch.Tensor  # [L, B, C]
    x_ffn: torch.Tensor  # [L, B, C]


class HeadState(NamedTuple):
    """Token shifts plus one WKV matrix per head (RWKV-5/6/7)."""

    x_att: torch.Tensor  # [L, B, C]
    wkv: torch.Tensor  # [L, B, H, N, N]
    x_ffn: torch.Tensor  # [L, B, C]


ModelState = ChannelState | HeadState
STATE_TYPES: dict[tuple[str, ...], type[ChannelState | HeadState]] = {t._fields: t for t in (ChannelState, HeadState)}


def state_type(version: str) -> type[ChannelState | HeadState]:
    """The NamedTuple whose fields are `version`'s state tensors (by the registry's names)."""
    return STATE_TYPES[version_info(version).state_names]


def initial_state(config: Any, batch: int, dtype: torch.dtype = torch.float32) -> ModelState:
    """The registry's initial state of `config` (a ModelConfig) for `batch` rows (constants only:
    a model's own `initial_state` adds what its weights say, e.g. a v6 `time_state`)."""
    initial = version_info(config.version).state_initial
    shapes = state_shapes(config, batch)
    return state_type(config.version)(*(torch.full(s, initial[n], dtype=dtype) for n, s in shapes.items()))  # type: ignore[arg-type]
