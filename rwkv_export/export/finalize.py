"""Turn a traced graph into the shipped file: function attached, metadata set, checked, saved.

- appends the model-local FunctionProto of the graph's WKV op (`rwkv::WKV4` .. `rwkv::WKV7` in the
  requested body, custom_ops/onnx_function.py) with the model's own default-domain opset, so bare
  onnxruntime runs the file;
- writes the key facts into metadata_props (the manifest holds the full story);
- runs onnx.checker with full_check (shape inference included);
- saves atomically; models over the 2 GB protobuf limit keep their weights in external data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import onnx

from rwkv_export.errors import RwkvExportError, first_line
from rwkv_export.ops.onnx_function import wkv_function
from rwkv_export.ops.registry import DOMAIN, DOMAIN_VERSION

# Bytes of weights above which they go to one shared weights.data rather than into each graph (a
# protobuf message cannot exceed 2 GiB; below this, self-contained files are simpler to move around,
# and the two inline copies cost little).
EXTERNAL_DATA_THRESHOLD = 256 << 20


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def wkv_function_sha256(op: str, opset: int, form: str) -> str:
    """Fingerprint of that function (recorded in the manifest): a cached export whose fingerprint
    differs carries an older body of the same form and is stale."""
    return hashlib.sha256(wkv_function(op, opset, form).SerializeToString(deterministic=True)).hexdigest()


def attach_wkv_function(model: onnx.ModelProto, form: str, op: str) -> int:
    """Add the rwkv::<op> function body (op: WKV4 .. WKV7); return the number of <op> nodes it serves."""
    nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == op]
    if not nodes:
        raise RwkvExportError(f"the traced graph has no rwkv::{op} node (was the WKV function swapped?)")
    others = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN} - {op})
    if others:
        raise RwkvExportError(f"the traced graph mixes rwkv::{op} with {', '.join(others)}; expected one WKV op")
    del model.functions[:]
    model.functions.append(wkv_function(op, default_opset(model), form))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return len(nodes)


def set_metadata(model: onnx.ModelProto, facts: dict[str, object]) -> None:
    del model.metadata_props[:]
    for key, value in facts.items():
        text = value if isinstance(value, str) else json.dumps(value)
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=text))


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_checked(model: onnx.ModelProto, path: Path, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[Path]:
    """Check and save `model` at `path` (a fresh directory's file); return the files written. Weights
    already placed in a file beside it (weights.py) stay there; others move to `<file>.data` above
    the threshold."""
    placed = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    external = not placed and initializer_bytes(model) > external_data_threshold
    if not external and not placed:
        _check(model, path)
    tmp = path.with_name(path.name + ".tmp")
    files = [path]
    if external:
        data_name = path.name + ".data"
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        files.append(path.with_name(data_name))
    else:
        onnx.save_model(model, tmp)
    os.replace(tmp, path)
    if external or placed:  # the checker reads external data relative to the saved file
        _check(str(path), path)
    return files


def _check(model: onnx.ModelProto | str, path: Path) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise RwkvExportError(f"{path.name} failed onnx.checker: {first_line(exc, 1000)}") from exc
