"""The model skeleton every RWKV reference shares: weights by role, the layer loop, sequence and step.

`RWKVModel` holds the embedding, blocks, head, dtype policy and the loop over layers; a version's
model file (rwkv4.py .. rwkv7.py) writes its block: `_time_mix` (token-shifted input and the WKV op
through `self.wkv`, swappable so the exporter can emit one custom node per layer) and `_channel_mix`.
`forward_sequence` runs [B, T] tokens; `forward_step` is the same block at T = 1, so the two forms
cannot drift apart. The state is the version's NamedTuple (state.py): x_att, the op's state, x_ffn.

Dtypes as in common.py. float16 applies the released rescale recipe where the registry says so
(`float16_rescale_every`): att.output / ffn.value of block i divided by 2^(i // rescale_every) at
load, and the residual stream halved after every `rescale_every`-th block; logits are unchanged up
to rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.errors import RwkvExportError
from rwkv_export.model.common import DTYPES, LN_EPS, shifted, state_dtype
from rwkv_export.model.state import ModelState, initial_state, state_type
from rwkv_export.versions import VERSIONS, state_shapes, version_info

WKVFn = Callable[..., tuple[torch.Tensor, ...]]  # the op's signature: (inputs ..., state ...) -> (y, state ...)
WKVState = tuple[torch.Tensor, ...]  # one layer's slice of the op's state tensors


TOP_KEYS = ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias", "head.weight")


def buffer_name(key: str) -> str:
    """A block tensor's buffer name: its key after `blocks.<i>.`, '.' -> '_' (blocks.3.att.key.weight -> att_key_weight)."""
    return key.split(".", 2)[2].replace(".", "_")


class Block(nn.Module):
    """One layer's weights as buffers named after the checkpoint keys ('.' -> '_'), cast by role."""

    def __init__(self, weights: Mapping[str, torch.Tensor], prefix: str, model: RWKVModel, layer: int) -> None:
        super().__init__()
        for key in weights:
            if key.startswith(prefix):
                self.register_buffer(buffer_name(key), model.buffer(key, weights[key], layer), persistent=True)


class RWKVModel(nn.Module):
    """The skeleton. forward_sequence: [B, T] tokens; forward_step: [B] tokens; both over the version's state."""

    WKV: WKVFn  # the version's op (custom_ops/wkv4|5|6|7.py)
    FP32_PARAMS: frozenset[str] = frozenset()  # buffers kept in the WKV dtype (float32 / float64)

    def __init__(
        self,
        config: ModelConfig,
        weights: Mapping[str, torch.Tensor],
        dtype: str = "float32",
        rescale_every: int | None = None,
        group_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise RwkvExportError(f"unknown dtype '{dtype}' (expected one of {', '.join(DTYPES)})")
        info = version_info(config.version)
        me = f"{type(self).__module__}:{type(self).__name__}"
        if info.model != me:
            mine = "/".join(v for v, i in VERSIONS.items() if i.model == me)
            raise RwkvExportError(f"{type(self).__name__} runs RWKV-{mine}, not RWKV-{config.version}")
        if group_norm_eps is not None:
            if info.group_norm_eps is None:
                raise RwkvExportError(f"group_norm_eps applies to RWKV-5/6/7 (ln_x GroupNorm); RWKV-{config.version} has no GroupNorm")
            if not group_norm_eps > 0:
                raise RwkvExportError(f"group_norm_eps must be positive, got {group_norm_eps}")
            config = dataclasses.replace(config, group_norm_eps=float(group_norm_eps))
        self.config = config
        self.n_head, self.head_size, self.eps = config.n_head, config.head_size, config.group_norm_eps
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.state_dtype = state_dtype(self.dtype)
        default = info.float16_rescale_every if dtype == "float16" else 0  # only float16 can overflow
        self.rescale_every = default if rescale_every is None else rescale_every
        self.state_type = state_type(config.version)
        self.wkv: WKVFn = type(self).WKV  # swappable: the exporter replaces it with a custom-op emitter
        self.blocks = nn.ModuleList(Block(weights, f"blocks.{i}.", self, i) for i in range(config.n_layer))
        for key in TOP_KEYS:
            self.register_buffer(key.replace(".", "_"), self.buffer(key, weights[key], None))

    # --- weights and state -----------------------------------------------------------------------

    def buffer(self, key: str, tensor: torch.Tensor, layer: int | None) -> torch.Tensor:
        """The buffer a checkpoint tensor becomes: of block `layer` (prepare), or top-level (layer None)."""
        if layer is None:
            return tensor.to(self.dtype).contiguous()
        # A linear layer's matrix (`*.weight`, 2-D) only gets a cast and a power-of-two rescale here:
        # exact in float32 as in float64 (one rounding either way) at half the bytes, which is most of
        # a large export's conversion work. Every other tensor goes through float64.
        matrix = tensor.dim() == 2 and key.endswith(".weight") and self.dtype != torch.float64
        wide = torch.float32 if matrix else torch.float64
        return self.prepare(buffer_name(key), tensor.to(wide), layer).contiguous()

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

    def initial_state(self, batch: int) -> ModelState:
        """The state a fresh sequence starts from (the registry's constants; a v6 `time_state` where present)."""
        return initial_state(self.config, batch, self.state_dtype)

    @classmethod
    def random_state(cls, config: ModelConfig, batch: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelState:
        """A plausible non-initial state for tests (standard normal: wkv entries of the size a few hundred tokens leave)."""
        g = torch.Generator().manual_seed(seed)
        shapes = state_shapes(config, batch).values()
        return state_type(config.version)(*(torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes))  # type: ignore[arg-type]

    # --- the block -------------------------------------------------------------------------------

    def _time_mix(
        self, i: int, b: Block, x: torch.Tensor, prev: torch.Tensor, wkv: WKVState, ctx: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, WKVState]:
        """x, prev [B, T, C] (LN1 output and its shift), the op's state of layer i -> (output [B, T, C], new op state)."""
        raise NotImplementedError

    def _channel_mix(self, b: Block, x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """v5/v6 form: sigma(Rf x_r) * (Vf relu(Kf x_k)^2); the square and Vf accumulate in float32."""
        xk, xr = self._ffn_inputs(b, x, prev)
        k = torch.relu(F.linear(xk, b.ffn_key_weight)).to(self.state_dtype) ** 2
        kv = F.linear(k, b.ffn_value_weight.to(self.state_dtype)).to(self.dtype)
        return torch.sigmoid(F.linear(xr, b.ffn_receptance_weight)) * kv

    def _ffn_inputs(self, b: Block, x: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # --- forward ---------------------------------------------------------------------------------

    def forward_sequence(self, tokens: torch.Tensor, state: ModelState, all_logits: bool = False) -> tuple[torch.Tensor, ModelState]:
        """tokens [B, T] int64 -> logits [B, V] (last position) or [B, T, V], new state."""
        x = self.embed(tokens)  # [B, T, C]
        new: list[list[torch.Tensor]] = [[] for _ in state]  # x_att, the op's state tensors, x_ffn
        ctx: dict[str, torch.Tensor] = {}  # per-call values shared across layers (v7's v_first)
        for i, b in enumerate(self.blocks):
            x, layer_state = self.layer(i, b, x, tuple(s[i] for s in state), ctx)
            for slot, s in zip(new, layer_state):
                slot.append(s)
            if self.halves_after(i):
                x = x / 2
        return self.logits(x, all_logits), self.state_type(*(torch.stack(s) for s in new))  # type: ignore[arg-type]

    # The three pieces of forward_sequence. The exporter traces each once (layer: once for layer 0 and
    # once for a later layer) and stamps the layer per block, so a layer may branch on `i == 0` only.

    def embed(self, tokens: torch.Tensor, w: Any = None) -> torch.Tensor:
        """tokens [B, T] -> the residual stream [B, T, C] (embedding, then block 0's ln0). w: an object
        with the weights as attributes in place of the model's buffers (the exporter's traced inputs)."""
        w = self if w is None else w
        return self._ln(F.embedding(tokens, w.emb_weight), w.blocks_0_ln0_weight, w.blocks_0_ln0_bias)

    def layer(
        self, i: int, b: Block, x: torch.Tensor, state: tuple[torch.Tensor, ...], ctx: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Block i on x [B, T, C] from its slice of the state (x_att, the op's state, x_ffn) -> (x, new slice)."""
        xx = self._ln(x, b.ln1_weight, b.ln1_bias)
        out, wkv = self._time_mix(i, b, xx, shifted(xx, state[0]), state[1:-1], ctx)
        x = x + out
        x_att = xx[:, -1].to(self.state_dtype)
        xx = self._ln(x, b.ln2_weight, b.ln2_bias)
        x = x + self._channel_mix(b, xx, shifted(xx, state[-1]))
        return x, (x_att, *wkv, xx[:, -1].to(self.state_dtype))

    def halves_after(self, i: int) -> bool:
        """Whether the float16 rescale halves the residual stream after block i."""
        return bool(self.rescale_every) and (i + 1) % self.rescale_every == 0

    def logits(self, x: torch.Tensor, all_logits: bool = False, w: Any = None) -> torch.Tensor:
        """The residual stream [B, T, C] -> logits [B, V] of the last position (or [B, T, V]), in the state dtype."""
        w = self if w is None else w
        if not all_logits:
            x = x[:, -1]
        return (self._ln(x, w.ln_out_weight, w.ln_out_bias) @ w.head_weight.t()).to(self.state_dtype)

    def forward_step(self, tokens: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        """tokens [B] int64 -> logits [B, V], new state: the sequence form at T = 1 (same WKV op, T symbolic)."""
        return self.forward_sequence(tokens.unsqueeze(1), state)

    def forward(self, tokens: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
        return self.forward_sequence(tokens, state) if tokens.dim() == 2 else self.forward_step(tokens, state)
