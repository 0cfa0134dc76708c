"""Trace the reference model into ONNX with torch.onnx (dynamo), one `rwkv::WKV4` node per layer.

The model's WKV function is swapped for `symbolic_wkv4`, which emits a bodiless custom node carrying
the TensorRT plugin attributes; the node's model-local function is attached afterwards (finalize.py),
since the exporter would inline an onnxscript function.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
from torch.export import Dim

from custom_ops.wkv4 import DOMAIN, DOMAIN_VERSION, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION
from rwkv_export.errors import RwkvExportError
from rwkv_export.export.spec import GraphSpec
from rwkv_export.model import RWKV4, State, initial_state


def symbolic_wkv4(time_decay: torch.Tensor, time_first: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  aa: torch.Tensor, bb: torch.Tensor, pp: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Same signature as custom_ops.wkv4.wkv4; during export it becomes one rwkv::WKV4 node."""
    return tuple(torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::{OP_TYPE}", [time_decay, time_first, k, v, aa, bb, pp],
        {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION},
        dtypes=[torch.float32] * 4, shapes=[k.shape, aa.shape, aa.shape, aa.shape], version=DOMAIN_VERSION,
    ))  # fmt: skip


class _Prefill(torch.nn.Module):
    def __init__(self, model: RWKV4, all_logits: bool) -> None:
        super().__init__()
        self.model, self.all_logits = model, all_logits

    def forward(self, tokens, x_att, aa, bb, pp, x_ffn):  # type: ignore[no-untyped-def]
        logits, state = self.model.forward_sequence(tokens, State(x_att, aa, bb, pp, x_ffn), self.all_logits)
        return (logits, *state)


class _Step(torch.nn.Module):
    def __init__(self, model: RWKV4) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens, x_att, aa, bb, pp, x_ffn):  # type: ignore[no-untyped-def]
        logits, state = self.model.forward_step(tokens, State(x_att, aa, bb, pp, x_ffn))
        return (logits, *state)


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


def trace_graph(model: RWKV4, spec: GraphSpec, opset: int | None, all_logits: bool = False) -> onnx.ModelProto:
    """Export one graph (spec.name: prefill or step) of `model`; WKV as custom nodes, no function yet."""
    cfg = model.config
    model.wkv = symbolic_wkv4
    batch, seq = Dim("batch", min=1), Dim("seq", min=1)
    # Example sizes > 1 so the exporter does not specialise the dynamic dims to 1.
    state = initial_state(cfg.n_layer, 2, cfg.n_embd)
    if spec.name == "prefill":
        module: torch.nn.Module = _Prefill(model, all_logits)
        tokens = torch.zeros(2, 3, dtype=torch.long)
        token_dims = {0: batch, 1: seq}
    else:
        module = _Step(model)
        tokens = torch.zeros(2, dtype=torch.long)
        token_dims = {0: batch}
    dynamic = {"tokens": token_dims, **{name: {1: batch} for name in State._fields}}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_torch_onnx_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (tokens, *state), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                input_names=spec.input_names, output_names=spec.output_names, optimize=True, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter's errors are long; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RwkvExportError(f"torch.onnx export of the {spec.name} graph failed: {first[:300]}") from exc
    finally:
        from custom_ops.wkv4 import wkv4

        model.wkv = wkv4
    assert program is not None
    return program.model_proto
