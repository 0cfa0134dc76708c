"""Graph specifications as data: every input and output of prefill and step, with roles and axes.

The manifest, the exporter's names and dynamic axes, and every runtime's feeds come from here, so
the state contract is written down once:
    prefill  tokens int64 [batch, seq] + state -> logits [batch, vocab] (or [batch, seq, vocab]) + state
    step     tokens int64 [batch]      + state -> logits [batch, vocab] + state
The state depends on the version (every tensor float32, `batch` symbolic):
    RWKV-4      x_att, aa, bb, pp, x_ffn   [n_layer, batch, n_embd]   (pp starts at -1e38)
    RWKV-5/6/7  x_att, x_ffn               [n_layer, batch, n_embd]
                wkv                        [n_layer, batch, n_head, head_size, head_size]
                                           (key-major S[i=k, j=v] for 5/6, value-major for 7)
The matching outputs carry the `_out` suffix and feed the input of the same name on the next call.
A state whose initial value is not one number (a v6 `time_state`) names an `initial_file`: a .npy
in the export directory, [n_layer, 1, ...] (batch axis of size 1), broadcast over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.manifest.specs import NamedIO, TensorSpec
from rwkv_export.model.state import OUTPUT_SUFFIX
from rwkv_export.versions import state_shapes, version_info

GRAPHS = ("prefill", "step")
DYNAMIC_DIMS = ("batch", "seq")


@dataclass(frozen=True)
class GraphSpec(NamedIO):
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def graph_spec(graph: str, config: ModelConfig, all_logits: bool = False, initial_files: dict[str, str] | None = None) -> GraphSpec:
    """The inputs and outputs of `graph`; initial_files: state name -> .npy of a non-constant initial value."""
    shapes = state_shapes(config, "batch")  # the version registry's state tensors, in input order
    initial = version_info(config.version).state_initial
    files = initial_files or {}
    if graph == "prefill":
        tokens = TensorSpec("tokens", "int64", ("batch", "seq"), "tokens")
        logits_shape: tuple[int | str, ...] = ("batch", "seq", config.vocab_size) if all_logits else ("batch", config.vocab_size)
    else:
        tokens = TensorSpec("tokens", "int64", ("batch",), "tokens")
        logits_shape = ("batch", config.vocab_size)
    states_in = tuple(TensorSpec(n, "float32", s, "state", initial=initial[n], initial_file=files.get(n)) for n, s in shapes.items())
    states_out = tuple(TensorSpec(n + OUTPUT_SUFFIX, "float32", s, "state", feeds=n) for n, s in shapes.items())
    logits = TensorSpec("logits", "float32", logits_shape, "logits")
    return GraphSpec(graph, (tokens, *states_in), (logits, *states_out))
