"""Graph specifications as data: every input and output of prefill and step, with roles and axes.

The manifest, the exporter's names and dynamic axes, and every runtime's feeds come from here, so
the state contract is written down once:
    prefill  tokens int64 [batch, seq] + state -> logits [batch, vocab] (or [batch, seq, vocab]) + state
    step     tokens int64 [batch]      + state -> logits [batch, vocab] + state
State inputs are x_att, aa, bb, pp, x_ffn ([n_layer, batch, n_embd] float32); the matching outputs
carry the `_out` suffix and feed the input of the same name on the next call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.model.state import OUTPUT_SUFFIX, STATE_INITIAL, STATE_NAMES

GRAPHS = ("prefill", "step")
DYNAMIC_DIMS = ("batch", "seq")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]
    role: str  # "tokens" | "logits" | "state"
    feeds: str | None = None  # output state -> the input it feeds on the next call
    initial: float | None = None  # input state's initial value

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def graph_spec(graph: str, config: ModelConfig, all_logits: bool = False) -> GraphSpec:
    state_shape = (config.n_layer, "batch", config.n_embd)
    if graph == "prefill":
        tokens = TensorSpec("tokens", "int64", ("batch", "seq"), "tokens")
        logits_shape: tuple[int | str, ...] = ("batch", "seq", config.vocab_size) if all_logits else ("batch", config.vocab_size)
    else:
        tokens = TensorSpec("tokens", "int64", ("batch",), "tokens")
        logits_shape = ("batch", config.vocab_size)
    states_in = tuple(TensorSpec(n, "float32", state_shape, "state", initial=STATE_INITIAL[n]) for n in STATE_NAMES)
    states_out = tuple(TensorSpec(n + OUTPUT_SUFFIX, "float32", state_shape, "state", feeds=n) for n in STATE_NAMES)
    logits = TensorSpec("logits", "float32", logits_shape, "logits")
    return GraphSpec(graph, (tokens, *states_in), (logits, *states_out))
