"""An exported graph made ready for Triton's batching: the state's batch axis first, control inputs.

Triton batches every tensor, implicit state included, on axis 0; our state tensors keep the batch
on axis 1 (`[n_layer, batch, ...]`, so one layer is one contiguous slice for the kernels). The
wrapper renames nothing the client or the manifest sees: each state input keeps its name with
shape `[batch, n_layer, ...]` and feeds a Transpose into the unchanged graph; each state output
keeps its name and comes out of a Transpose. The sequence batcher's control tensors (START, READY,
END; int32 `[batch, 1]`, `[1]` without batching) are declared as inputs, as Triton feeds them to the model; the graph does
not read them (Triton itself puts the initial state in place on START). The model-local WKV
function stays, so stock ONNX Runtime (Triton's onnxruntime backend) runs the file as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rwkv_export.manifest import Manifest

CONTROLS = ("START", "READY", "END")
SUFFIX = "__layer_major"


def swap01(shape: list[Any]) -> list[Any]:
    """[n_layer, batch, ...] <-> [batch, n_layer, ...]."""
    return [shape[1], shape[0], *shape[2:]]


def _rename_uses(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for info in graph.value_info:
        if info.name == old:
            info.name = new


def _value_info(name: str, elem_type: int, shape: list[Any]) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, [d if isinstance(d, str) else int(d) for d in shape])


def batch_first_model(manifest: Manifest, graph: str, controls: bool = True, batched_controls: bool = True) -> Any:
    """The exported `graph` ("prefill" or "step") of the export `manifest` was read from, with
    batch-first state and control inputs, as an onnx.ModelProto (external data loaded into it)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(manifest.path(manifest.graph(graph).file, f"graphs.{graph}.file")), load_external_data=True)
    g = model.graph
    inputs = {v.name: v for v in g.input}
    outputs = {v.name: v for v in g.output}
    transposes = []
    for spec in manifest.state:
        name, out = spec.name, spec.output
        if spec.batch_axis != 1:
            raise ValueError(f"state '{name}' has its batch on axis {spec.batch_axis}, expected 1")
        perm = [1, 0, *range(2, len(spec.shape))]
        elem = inputs[name].type.tensor_type.elem_type
        _rename_uses(g, name, name + SUFFIX)
        g.input.remove(inputs[name])
        g.input.append(_value_info(name, elem, swap01(list(spec.shape))))
        transposes.append(helper.make_node("Transpose", [name], [name + SUFFIX], name=f"batch_first_in_{name}", perm=perm))
        _rename_uses(g, out, out + SUFFIX)
        position = list(g.output).index(outputs[out])
        g.output.remove(outputs[out])
        g.output.insert(position, _value_info(out, elem, swap01(list(spec.shape))))
        g.node.append(helper.make_node("Transpose", [out + SUFFIX], [out], name=f"batch_first_out_{name}", perm=perm))
    for i, node in enumerate(transposes):
        g.node.insert(i, node)
    if controls:
        shape: list[Any] = ["batch", 1] if batched_controls else [1]  # Triton's control tensor shape
        g.input.extend(_value_info(c, TensorProto.INT32, shape) for c in CONTROLS)
    if model.ByteSize() < 2**31 - 2**24:  # the in-memory checker is limited to protobuf's 2 GB
        onnx.checker.check_model(model)
    return model


def save_model(model: Any, path: Path, external: bool) -> None:
    """Write model.onnx (with one external data file beside it when the export had external data)."""
    import onnx

    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


def has_external_data(manifest: Manifest, graph: str) -> bool:
    return bool(manifest.graph(graph).external_data)
