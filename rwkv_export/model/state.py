"""The recurrent state contract shared by the reference model and every exported graph.

Five tensors, each [n_layer, batch, n_embd], float32 in every graph (float64 in the oracle):
    x_att  previous token's LN1 output (token shift of time mixing)
    aa, bb WKV numerator / denominator, divided by exp(pp)
    pp     WKV running max exponent
    x_ffn  previous token's LN2 output (token shift of channel mixing)
Initial value 0, except pp = -1e38. Graph outputs carry the same names with an `_out` suffix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rwkv_export.ops.wkv4 import PP_INIT

STATE_NAMES = ("x_att", "aa", "bb", "pp", "x_ffn")
STATE_INITIAL = {"x_att": 0.0, "aa": 0.0, "bb": 0.0, "pp": PP_INIT, "x_ffn": 0.0}
OUTPUT_SUFFIX = "_out"


class State(NamedTuple):
    x_att: torch.Tensor  # [L, B, C]
    aa: torch.Tensor  # [L, B, C]
    bb: torch.Tensor  # [L, B, C]
    pp: torch.Tensor  # [L, B, C]
    x_ffn: torch.Tensor  # [L, B, C]


def initial_state(n_layer: int, batch: int, n_embd: int, dtype: torch.dtype = torch.float32) -> State:
    return State(*(torch.full((n_layer, batch, n_embd), STATE_INITIAL[n], dtype=dtype) for n in STATE_NAMES))


def random_state(n_layer: int, batch: int, n_embd: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> State:
    """A plausible non-initial state (aa/bb consistent: bb > 0, |aa| <= bb * max|v|), for tests."""
    g = torch.Generator().manual_seed(seed)
    shape = (n_layer, batch, n_embd)
    x_att = torch.randn(shape, generator=g, dtype=torch.float64)
    bb = torch.rand(shape, generator=g, dtype=torch.float64) * 3 + 0.1
    aa = bb * (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1)
    pp = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    x_ffn = torch.randn(shape, generator=g, dtype=torch.float64)
    return State(*(t.to(dtype) for t in (x_att, aa, bb, pp, x_ffn)))
