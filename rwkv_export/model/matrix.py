"""Parts shared by the RWKV-5, -6 and -7 references: the matrix-valued state and the model skeleton.

State (`MatrixState`), three tensors, float32 in every graph (float64 in the oracle), initial 0:
    x_att  [n_layer, batch, n_embd]            previous token's LN1 output (time-mix token shift)
    wkv    [n_layer, batch, n_head, N, N]      the WKV matrix per head; key-major S[h, i=k, j=v]
                                               for v5/v6, value-major S[h, i=v, j=k] for v7
    x_ffn  [n_layer, batch, n_embd]            previous token's LN2 output (channel-mix token shift)
(v6 checkpoints with `time_state` start from it instead of 0: use `model.initial_state(batch)`.)

`MatrixRWKV` holds the embedding, blocks, head, dtype policy and the sequence/step loop; each version
writes `_time_mix` (and the channel-mix flavour). Dtypes as RWKV4: float64 (oracle), float32,
float16 and bfloat16 for activations; WKV inputs, decay, GroupNorm and state always float32 (float64
in the oracle). float16 rescales the residual every `rescale_every` layers where the version does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.errors import RwkvExportError
from rwkv_export.model.rwkv4 import DTYPES, LN_EPS

WKVFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (y [B, T, H, N], state_out [B, H, N, N])
MATRIX_STATE_NAMES = ("x_att", "wkv", "x_ffn")
MATRIX_STATE_INITIAL = {"x_att": 0.0, "wkv": 0.0, "x_ffn": 0.0}


class MatrixState(NamedTuple):
    x_att: torch.Tensor  # [L, B, C]
    wkv: torch.Tensor  # [L, B, H, N, N]
    x_ffn: torch.Tensor  # [L, B, C]


def matrix_state_shapes(config: ModelConfig, batch: int) -> dict[str, tuple[int, ...]]:
    L, C, H, N = config.n_layer, config.n_embd, config.extra["n_head"], config.extra["head_size"]
    return {"x_att": (L, batch, C), "wkv": (L, batch, H, N, N), "x_ffn": (L, batch, C)}


def initial_matrix_state(config: ModelConfig, batch: int, dtype: torch.dtype = torch.float32) -> MatrixState:
    return MatrixState(*(torch.zeros(s, dtype=dtype) for s in matrix_state_shapes(config, batch).values()))


def random_matrix_state(config: ModelConfig, batch: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> MatrixState:
    """A plausible non-initial state for tests (wkv entries of the size a few hundred tokens leave)."""
    g = torch.Generator().manual_seed(seed)
    return MatrixState(*(torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in matrix_state_shapes(config, batch).values()))


def group_norm(y: torch.Tensor, n_head: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """ln_x: per head over its N channels (biased variance), then a per-channel affine. y [B, T, A]."""
    B, T, A = y.shape
    y = F.layer_norm(y.view(B, T, n_head, A // n_head), (A // n_head,), eps=eps).view(B, T, A)
    return y * weight + bias


def shifted(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Token shift: x [B, T, C] -> the previous token's row for every t (prev [B, C] for t = 0)."""
    return torch.cat([prev.to(x.dtype).unsqueeze(1), x[:, :-1]], dim=1)


class Block(nn.Module):
    """One layer's weights as buffers named after the checkpoint keys ('.' -> '_'), cast by role."""

    def __init__(self, weights: Mapping[str, torch.Tensor], prefix: str, model: MatrixRWKV, layer: int) -> None:
        super().__init__()
        for key, tensor in weights.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):].replace(".", "_")
            t = model.prepare(name, tensor.to(torch.float64), layer)
            self.register_buffer(name, t.contiguous(), persistent=True)


class MatrixRWKV(nn.Module):
    """The v5/v6/v7 skeleton. forward_sequence: [B, T] tokens; forward_step: [B] tokens."""

    WKV: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # the version's op (custom_ops/wkv5|6|7.py)
    VERSIONS: tuple[str, ...] = ()
    RESCALES = True  # x070 has no float16 residual rescale
    FP32_PARAMS: frozenset[str] = frozenset()  # buffers kept in the WKV dtype (float32 / float64)

    def __init__(self, config: ModelConfig, weights: Mapping[str, torch.Tensor], dtype: str = "float32",
                 rescale_every: int | None = None, group_norm_eps: float | None = None) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise RwkvExportError(f"unknown dtype '{dtype}' (expected one of {', '.join(DTYPES)})")
        if config.version not in self.VERSIONS:
            raise RwkvExportError(f"{type(self).__name__} runs RWKV-{'/'.join(self.VERSIONS)}, not RWKV-{config.version}")
        if group_norm_eps is not None:
            if not group_norm_eps > 0:
                raise RwkvExportError(f"group_norm_eps must be positive, got {group_norm_eps}")
            config = dataclasses.replace(config, extra={**config.extra, "group_norm_eps": float(group_norm_eps)})
        self.config = config
        self.n_head, self.head_size = config.extra["n_head"], config.extra["head_size"]
        self.eps = float(config.extra["group_norm_eps"])
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.state_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        default = 6 if dtype == "float16" and self.RESCALES else 0
        self.rescale_every = default if rescale_every is None else rescale_every
        self.wkv: WKVFn = type(self).WKV  # swappable: the exporter replaces it with a custom-op emitter
        self.blocks = nn.ModuleList(Block(weights, f"blocks.{i}.", self, i) for i in range(config.n_layer))
        for name in ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias", "head.weight"):
            self.register_buffer(name.replace(".", "_"), weights[name].to(self.dtype).contiguous())

    # --- weights ---------------------------------------------------------------------------------

    def prepare(self, name: str, t: torch.Tensor, layer: int) -> torch.Tensor:
        """Cast one block tensor (float64 in) for its role; versions add derived buffers here."""
        if t.dim() == 3 and t.shape[:2] == (1, 1):
            t = t.reshape(-1)  # mixes and biases [1, 1, C] -> [C]
        if name in self.FP32_PARAMS:
            return t.to(self.state_dtype)
        if name in ("att_output_weight", "ffn_value_weight"):
            t = t / self._scale(layer)
        return t.to(self.dtype)

    def _scale(self, layer: int) -> float:
        return float(2 ** (layer // self.rescale_every)) if self.rescale_every else 1.0

    def _ln(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, LN_EPS)

    def initial_state(self, batch: int) -> MatrixState:
        """The state a fresh sequence starts from (zeros; a v6 `time_state` where present)."""
        return initial_matrix_state(self.config, batch, self.state_dtype)

    # --- forward ---------------------------------------------------------------------------------

    def _time_mix(self, i: int, b: Block, x: torch.Tensor, prev: torch.Tensor, wkv: torch.Tensor,
                  ctx: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x, prev [B, T, C] (LN1 output and its shift), wkv [B, H, N, N] -> (output [B, T, C], new wkv)."""
        raise NotImplementedError

    def _channel_mix(self, b: Block, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """v5/v6 form: sigma(Rf x_r) * (Vf relu(Kf x_k)^2); the square and Vf accumulate in float32."""
        xk, xr = self._ffn_inputs(b, x, prev)
        k = torch.relu(F.linear(xk, b.ffn_key_weight)).to(self.state_dtype) ** 2
        kv = F.linear(k, b.ffn_value_weight.to(self.state_dtype)).to(self.dtype)
        return torch.sigmoid(F.linear(xr, b.ffn_receptance_weight)) * kv

    def _ffn_inputs(self, b: Block, x: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward_sequence(self, tokens: torch.Tensor, state: MatrixState, all_logits: bool = False) -> tuple[torch.Tensor, MatrixState]:
        """tokens [B, T] int64 -> logits [B, V] (last position) or [B, T, V], new state."""
        x = self._ln(F.embedding(tokens, self.emb_weight), self.blocks_0_ln0_weight, self.blocks_0_ln0_bias)  # [B, T, C]
        new: list[list[torch.Tensor]] = [[], [], []]
        ctx: dict[str, torch.Tensor] = {}  # per-call values shared across layers (v7's v_first)
        for i, b in enumerate(self.blocks):
            xx = self._ln(x, b.ln1_weight, b.ln1_bias)
            out, wkv = self._time_mix(i, b, xx, shifted(xx, state.x_att[i]), state.wkv[i], ctx)
            x = x + out
            new[0].append(xx[:, -1].to(self.state_dtype))
            new[1].append(wkv)

            xx = self._ln(x, b.ln2_weight, b.ln2_bias)
            x = x + self._channel_mix(b, xx, shifted(xx, state.x_ffn[i]))
            new[2].append(xx[:, -1].to(self.state_dtype))
            if self.rescale_every and (i + 1) % self.rescale_every == 0:
                x = x / 2
        if not all_logits:
            x = x[:, -1]
        logits = self._ln(x, self.ln_out_weight, self.ln_out_bias) @ self.head_weight.t()
        return logits.to(self.state_dtype), MatrixState(*(torch.stack(s) for s in new))

    def forward_step(self, tokens: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        """tokens [B] int64 -> logits [B, V], new state: the sequence form at T = 1 (same WKV op, T symbolic)."""
        return self.forward_sequence(tokens.unsqueeze(1), state)

    def forward(self, tokens: torch.Tensor, state: MatrixState) -> tuple[torch.Tensor, MatrixState]:
        return self.forward_sequence(tokens, state) if tokens.dim() == 2 else self.forward_step(tokens, state)
