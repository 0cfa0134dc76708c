"""The RWKV-4 reference model (../shared/spec/RWKV4.md), in sequence and step forms.

Both forms share weights, the `State` contract and the WKV function. The WKV recurrence is called
through `self.wkv` (signature of the `rwkv::WKV4` op, custom_ops/wkv4.py), so the exporter can swap
in a function that emits one custom node per layer.

Dtypes: float64 (the oracle: everything float64), float32, float16 and bfloat16 (linear layers and
norms in that dtype, WKV and state in float32). float16 applies the released rescale recipe:
att.output / ffn.value of block i divided by 2^(i // rescale_every) at load, and the residual
stream halved after every `rescale_every`-th block; logits are unchanged up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from rwkv_export.ops.wkv4 import wkv4
from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.errors import RwkvExportError
from rwkv_export.model.state import State, initial_state

LN_EPS = 1e-5
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WKVFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


class Block(nn.Module):
    """One RWKV-4 layer's weights, as buffers named after the checkpoint keys ('.' -> '_')."""

    def __init__(self, weights: Mapping[str, torch.Tensor], prefix: str, dtype: torch.dtype, scale: float) -> None:
        super().__init__()
        wkv_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        for key, tensor in weights.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :].replace(".", "_")
            if name in ("att_time_decay", "att_time_first"):
                t = tensor.to(wkv_dtype)
            elif name.startswith(("att_time_mix", "ffn_time_mix")):
                t = tensor.reshape(-1).to(dtype)  # [C]
            else:
                t = tensor.to(torch.float64)
                if name in ("att_output_weight", "ffn_value_weight"):
                    t = t / scale
                t = t.to(dtype)
            self.register_buffer(name, t.contiguous(), persistent=True)


def _mix(x: torch.Tensor, prev: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    return x * mix + prev * (1 - mix)


class RWKV4(nn.Module):
    """RWKV-4 language model. forward_sequence: [B, T] tokens; forward_step: [B] tokens."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, torch.Tensor], dtype: str = "float32", rescale_every: int | None = None) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise RwkvExportError(f"unknown dtype '{dtype}' (expected one of {', '.join(DTYPES)})")
        self.config = config
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.state_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        # Rescaling only matters where activations can overflow: float16.
        self.rescale_every = (6 if dtype == "float16" else 0) if rescale_every is None else rescale_every
        self.wkv: WKVFn = wkv4
        self.blocks = nn.ModuleList(
            Block(weights, f"blocks.{i}.", self.dtype, self._scale(i)) for i in range(config.n_layer)
        )
        for name in ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias", "head.weight"):
            self.register_buffer(name.replace(".", "_"), weights[name].to(self.dtype).contiguous())

    def _scale(self, layer: int) -> float:
        return float(2 ** (layer // self.rescale_every)) if self.rescale_every else 1.0

    def initial_state(self, batch: int) -> State:
        """The state a fresh sequence starts from, in the state dtype (the RWKV-5+ models' method too)."""
        return initial_state(self.config.n_layer, batch, self.config.n_embd, self.state_dtype)

    def _ln(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, LN_EPS)

    # --- sequence (parallel) form ------------------------------------------------------------

    def forward_sequence(self, tokens: torch.Tensor, state: State, all_logits: bool = False) -> tuple[torch.Tensor, State]:
        """tokens [B, T] int64 -> logits [B, V] (last position) or [B, T, V], new state."""
        x = self._ln(F.embedding(tokens, self.emb_weight), self.blocks_0_ln0_weight, self.blocks_0_ln0_bias)  # [B, T, C]
        new: list[list[torch.Tensor]] = [[], [], [], [], []]
        for i, b in enumerate(self.blocks):
            xx = self._ln(x, b.ln1_weight, b.ln1_bias)
            prev = torch.cat([state.x_att[i].to(self.dtype).unsqueeze(1), xx[:, :-1]], dim=1)  # token shift
            k = (_mix(xx, prev, b.att_time_mix_k) @ b.att_key_weight.t()).to(self.state_dtype)
            v = (_mix(xx, prev, b.att_time_mix_v) @ b.att_value_weight.t()).to(self.state_dtype)
            r = torch.sigmoid(_mix(xx, prev, b.att_time_mix_r) @ b.att_receptance_weight.t())
            y, aa, bb, pp = self.wkv(b.att_time_decay, b.att_time_first, k, v, state.aa[i], state.bb[i], state.pp[i])
            x = x + (r * y.to(self.dtype)) @ b.att_output_weight.t()
            new[0].append(xx[:, -1].to(self.state_dtype))
            new[1].append(aa)
            new[2].append(bb)
            new[3].append(pp)

            xx = self._ln(x, b.ln2_weight, b.ln2_bias)
            prev = torch.cat([state.x_ffn[i].to(self.dtype).unsqueeze(1), xx[:, :-1]], dim=1)
            kk = torch.relu(_mix(xx, prev, b.ffn_time_mix_k) @ b.ffn_key_weight.t()) ** 2
            rr = torch.sigmoid(_mix(xx, prev, b.ffn_time_mix_r) @ b.ffn_receptance_weight.t())
            x = x + rr * (kk @ b.ffn_value_weight.t())
            new[4].append(xx[:, -1].to(self.state_dtype))
            if self.rescale_every and (i + 1) % self.rescale_every == 0:
                x = x / 2
        if not all_logits:
            x = x[:, -1]
        logits = self._ln(x, self.ln_out_weight, self.ln_out_bias) @ self.head_weight.t()
        return logits.to(self.state_dtype), State(*(torch.stack(s) for s in new))

    # --- step (recurrent) form ---------------------------------------------------------------

    def forward_step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """tokens [B] int64 -> logits [B, V], new state. One token, matrix-vector products."""
        x = self._ln(F.embedding(tokens, self.emb_weight), self.blocks_0_ln0_weight, self.blocks_0_ln0_bias)  # [B, C]
        new: list[list[torch.Tensor]] = [[], [], [], [], []]
        for i, b in enumerate(self.blocks):
            xx = self._ln(x, b.ln1_weight, b.ln1_bias)
            prev = state.x_att[i].to(self.dtype)
            k = F.linear(_mix(xx, prev, b.att_time_mix_k), b.att_key_weight).to(self.state_dtype)
            v = F.linear(_mix(xx, prev, b.att_time_mix_v), b.att_value_weight).to(self.state_dtype)
            r = torch.sigmoid(F.linear(_mix(xx, prev, b.att_time_mix_r), b.att_receptance_weight))
            y, aa, bb, pp = self.wkv(b.att_time_decay, b.att_time_first, k.unsqueeze(1), v.unsqueeze(1), state.aa[i], state.bb[i], state.pp[i])
            x = x + F.linear(r * y[:, 0].to(self.dtype), b.att_output_weight)
            new[0].append(xx.to(self.state_dtype))
            new[1].append(aa)
            new[2].append(bb)
            new[3].append(pp)

            xx = self._ln(x, b.ln2_weight, b.ln2_bias)
            prev = state.x_ffn[i].to(self.dtype)
            kk = torch.relu(F.linear(_mix(xx, prev, b.ffn_time_mix_k), b.ffn_key_weight)) ** 2
            rr = torch.sigmoid(F.linear(_mix(xx, prev, b.ffn_time_mix_r), b.ffn_receptance_weight))
            x = x + rr * F.linear(kk, b.ffn_value_weight)
            new[4].append(xx.to(self.state_dtype))
            if self.rescale_every and (i + 1) % self.rescale_every == 0:
                x = x / 2
        logits = F.linear(self._ln(x, self.ln_out_weight, self.ln_out_bias), self.head_weight)
        return logits.to(self.state_dtype), State(*(torch.stack(s) for s in new))

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self.forward_sequence(tokens, state) if tokens.dim() == 2 else self.forward_step(tokens, state)
