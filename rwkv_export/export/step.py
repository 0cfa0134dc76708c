"""The step graph is the prefill graph at T = 1: no second trace.

Every version's step *is* its sequence form at T = 1 (RWKVModel.forward_step), so `step_from_prefill`
wraps the prefill graph (tokens [batch] -> Unsqueeze -> [batch, 1]; logits [batch, 1, vocab] ->
Squeeze for an --all-logits prefill). Both graphs name the same initializers, so a shared weight
file serves both (weights.py).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx


def step_from_prefill(prefill: onnx.ModelProto) -> onnx.ModelProto:
    """The step graph from the traced prefill graph (a copy; see the module docstring)."""
    model = copy.deepcopy(prefill)
    graph = model.graph
    axes = onnx.numpy_helper.from_array(np.array([1], np.int64), "step_seq_axis")
    graph.initializer.append(axes)
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name == "tokens":
                node.input[j] = "step_tokens"
    graph.node.insert(0, onnx.helper.make_node("Unsqueeze", ["tokens", axes.name], ["step_tokens"], name="step_tokens_to_seq"))
    tokens = next(i for i in graph.input if i.name == "tokens")
    del tokens.type.tensor_type.shape.dim[1:]  # [batch, seq] -> [batch]
    logits = next(o for o in graph.output if o.name == "logits")
    dims = logits.type.tensor_type.shape.dim
    if len(dims) == 3:  # an --all-logits prefill: [batch, seq, vocab] -> [batch, vocab]
        for node in graph.node:
            for j, name in enumerate(node.output):
                if name == "logits":
                    node.output[j] = "step_logits"
        graph.node.append(onnx.helper.make_node("Squeeze", ["step_logits", axes.name], ["logits"], name="step_logits_last"))
        del dims[1]
    del graph.value_info[:]  # annotations with the seq dim; the checker and ORT infer them again
    return model
