"""Trace the reference model into ONNX with torch.onnx (dynamo), one `rwkv::WKV<n>` node per layer.

The model's WKV function (`model.wkv`) is swapped for a symbolic emitter (`symbolic_wkv(op)`) with
the op's signature, which emits a bodiless custom node carrying the TensorRT plugin attributes and
the output shapes of the op's registry entry; the node's model-local function is attached afterwards
(finalize.py), since the exporter would inline an onnxscript function.

Step graphs are not traced again: every version's step *is* its sequence form at T = 1
(RWKVModel.forward_step), so `step_from_prefill` wraps the traced prefill graph (tokens [batch] ->
Unsqueeze -> [batch, 1]; logits [batch, 1, vocab] -> Squeeze for an --all-logits prefill). That
computes exactly what tracing forward_step would and saves one trace (~40% of an export's time).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import numpy as np
import onnx
import torch
from torch.export import Dim

from rwkv_export.errors import RwkvExportError, first_line
from rwkv_export.export.spec import GraphSpec
from rwkv_export.model import RWKVModel
from rwkv_export.ops.registry import DOMAIN, DOMAIN_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION, op_spec
from rwkv_export.versions import version_info


def symbolic_wkv(op: str):  # type: ignore[no-untyped-def]
    """An emitter with the signature of the op's torch definition (custom_ops/wkvN.py): during export
    it becomes one rwkv::<op> node, its outputs float32 and shaped as the registry's `shape_like`."""
    spec = op_spec(op)
    like = [spec.inputs.index(name) for name in spec.shape_like]

    def emit(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.onnx.ops.symbolic_multi_out(
            f"{DOMAIN}::{op}", list(inputs), {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION},
            dtypes=[torch.float32] * len(like), shapes=[inputs[i].shape for i in like], version=DOMAIN_VERSION,
        ))  # fmt: skip

    return emit


class _Graph(torch.nn.Module):
    """(tokens, *state) -> (logits, *state) through the model's sequence form (prefill) or step form."""

    def __init__(self, model: RWKVModel, step: bool, all_logits: bool) -> None:
        super().__init__()
        self.model, self.step, self.all_logits = model, step, all_logits
        self.state_type = type(model.initial_state(1))

    def forward(self, tokens, *state):  # type: ignore[no-untyped-def]
        if self.step:
            logits, new = self.model.forward_step(tokens, self.state_type(*state))
        else:
            logits, new = self.model.forward_sequence(tokens, self.state_type(*state), self.all_logits)
        return (logits, *new)


@contextlib.contextmanager
def _quiet_torch_onnx_logs():  # type: ignore[no-untyped-def]
    """The exporter logs unrelated registry warnings (e.g. torchvision ops); keep stderr readable."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def trace_graph(model: RWKVModel, spec: GraphSpec, opset: int | None, all_logits: bool = False) -> onnx.ModelProto:
    """Export one graph (spec.name: prefill or step) of `model`; WKV as custom nodes, no function yet."""
    original = model.wkv
    model.wkv = symbolic_wkv(version_info(model.config.version).op)
    batch, seq = Dim("batch", min=1), Dim("seq", min=1)
    # Example sizes > 1 so the exporter does not specialise the dynamic dims to 1.
    state = tuple(torch.zeros_like(t, dtype=torch.float32) for t in model.initial_state(2))
    module = _Graph(model, spec.name == "step", all_logits)
    if spec.name == "prefill":
        tokens = torch.zeros(2, 3, dtype=torch.long)
        token_dims = {0: batch, 1: seq}
    else:
        tokens = torch.zeros(2, dtype=torch.long)
        token_dims = {0: batch}
    dynamic = {"tokens": token_dims, "state": tuple({1: batch} for _ in state)}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_torch_onnx_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (tokens, *state), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                input_names=spec.input_names, output_names=spec.output_names, optimize=True, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter's errors are long; keep the first line
        first = first_line(exc, 1000)
        raise RwkvExportError(f"torch.onnx export of the {spec.name} graph failed: {first[:300]}") from exc
    finally:
        model.wkv = original
    assert program is not None
    return program.model_proto


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
