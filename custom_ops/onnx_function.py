"""Every WKV op as a model-local ONNX function, its custom node, and a one-node model around it.

The exporter emits one `rwkv::<op>` node per layer (domain `rwkv`, version 1) carrying the
attributes TensorRT's parser uses to find a plugin (`plugin_namespace="rwkv"`, `plugin_version="1"`,
../shared/spec/TENSORRT.md) and ships the op's FunctionProto in `model.functions`, so onnxruntime
(which inlines model-local functions) and `onnx.reference.ReferenceEvaluator` run the file without a
custom-op library. The bodies themselves live per op (custom_ops/wkv4_onnx.py, wkv6_onnx.py for
WKV5/6, wkv7_onnx.py); which bodies an op has, and its default, are registry fields.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from rwkv_export.errors import RwkvExportError
from rwkv_export.ops.onnx_builder import FLOAT, MIN_OPSET, Builder
from rwkv_export.ops.registry import ALL_BODIES, DOMAIN, DOMAIN_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION, OpSpec, op_spec

PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")

__all__ = ["MIN_OPSET", "PLUGIN_ATTRIBUTES", "check_body", "wkv_function", "wkv_model", "wkv_node"]


def check_body(op: str, opset: int, body: str | None = None, chunk: int | None = None) -> tuple[OpSpec, str, int | None]:
    """(spec, body, chunk) with the op's defaults filled in, or a one-line RwkvExportError."""
    spec = op_spec(op)
    body = body or spec.default_body
    if body not in ALL_BODIES:
        raise RwkvExportError(f"{op} ONNX body: unknown form {body!r}; expected one of {spec.bodies}")
    if body not in spec.bodies:
        raise RwkvExportError(f"{op} ONNX body: no {body} form (its forms: {', '.join(spec.bodies)}); use {spec.default_body}")
    if int(opset) < MIN_OPSET:
        raise RwkvExportError(f"{op} ONNX body: opset {opset} < {MIN_OPSET}; export with opset >= {MIN_OPSET}")
    if chunk is not None and body not in spec.chunks:
        raise RwkvExportError(f"{op} form {body!r}: unknown options ['chunk']; only {', '.join(spec.chunks) or 'no form'} takes one")
    if body in spec.chunks:
        chunk = spec.chunks[body] if chunk is None else chunk
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise RwkvExportError(f"{op} form {body!r}: chunk must be a positive int, got {chunk!r}")
    return spec, body, chunk


def wkv_function(op: str, opset: int, body: str | None = None, chunk: int | None = None, single_step: bool = True) -> onnx.FunctionProto:
    """The FunctionProto `rwkv::<op>` written as `body` (None: the op's default), for a model whose
    default-domain opset is `opset`. chunk: L of a chunked body (None: its default). single_step
    (default True): an If sends T == 1 straight to the one-token body, skipping the body's set-up."""
    spec, body, chunk = check_body(op, opset, body, chunk)
    Builder.restart_names()
    nodes = spec.body_module.nodes(op, body, chunk, single_step)
    return helper.make_function(
        DOMAIN, op, list(spec.inputs), list(spec.outputs), nodes,
        opset_imports=[helper.make_opsetid("", int(opset))],
        attributes=list(PLUGIN_ATTRIBUTES), doc_string=spec.function_doc(body),
    )  # fmt: skip


def wkv_node(op: str, inputs, outputs, name: str) -> onnx.NodeProto:  # type: ignore[no-untyped-def]
    """One `rwkv::<op>` node with the TensorRT plugin attributes (namespace, version)."""
    return helper.make_node(
        op, list(inputs), list(outputs), name=name, domain=DOMAIN,
        plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION,
    )  # fmt: skip


def wkv_model(
    op: str,
    opset: int = MIN_OPSET,
    body: str | None = None,
    chunk: int | None = None,
    weights: dict[str, np.ndarray] | None = None,
    single_step: bool = True,
) -> onnx.ModelProto:
    """A standalone model of one `op` node and its function, every size dynamic (tests, benches).

    weights: optional inputs (e.g. WKV4's time_decay, time_first) stored as initializers, as in an
    exported model (ORT then constant-folds the weight-only part of the body); else graph inputs.
    """
    spec = op_spec(op)
    consts = weights or {}
    io = lambda n: helper.make_tensor_value_info(n, FLOAT, list(spec.dims[n]))  # noqa: E731
    inits = [onnx.numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in consts.items()]
    graph = helper.make_graph(
        [wkv_node(op, spec.inputs, spec.outputs, op.lower())], op.lower(),
        [io(n) for n in spec.inputs if n not in consts], [io(n) for n in spec.outputs], initializer=inits,
    )  # fmt: skip
    return helper.make_model(
        graph, functions=[wkv_function(op, opset, body, chunk, single_step)],
        opset_imports=[helper.make_opsetid("", int(opset)), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
    )  # fmt: skip
