"""Quantize an existing float32 export directory into a new one, without tracing again.

The quantization `export --quantize` does slab by slab from a checkpoint (quantize.py, qblocks.py),
applied here in memory to DIR's saved graphs one graph at a time (`quantize_graph`): the WKV function
is attached again (a qdq export raises the opset), files are checked and hashed, and the manifest
gains `export.quantization`. The benchmark derives its int8/int4 workspaces from the float32 one this
way; for a model whose float weights do not fit in memory, export with --quantize instead.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from rwkv_export.errors import RwkvExportError
from rwkv_export.export.finalize import (
    attach_wkv_function,
    default_opset,
    save_checked,
    set_metadata,
    wkv_function_sha256,
)
from rwkv_export.export.quantize import QuantSpec, quantization_manifest, quantize_graph
from rwkv_export.fileio import atomic_directory, atomic_write_json, sha256_file
from rwkv_export.manifest import MANIFEST, read_manifest


def quantize_export(
    source: str | Path, out_dir: str | Path, spec: QuantSpec, force: bool = False, progress: Callable[[str], None] = lambda message: None
) -> dict[str, Any]:
    """Write a quantized copy of the float32 export `source` to `out_dir`; return its manifest."""
    source, out_dir = Path(source), Path(out_dir)
    manifest = copy.deepcopy(read_manifest(source))
    export = manifest["export"]
    if export.get("quantization"):
        raise RwkvExportError(f"'{source}' is already quantized ({export['quantization'].get('scheme')}); start from a float32 export")
    spec.check(manifest["dtype"])
    quantized: dict[str, Any] = {}
    with atomic_directory(out_dir, force=force) as tmp:
        graph_files = {name for info in manifest["graphs"].values() for name in info["sha256"]}
        for path in source.iterdir():  # tokenizer.json, initial_*.npy: copied as they are
            if path.is_file() and path.name not in graph_files and path.name != MANIFEST:
                shutil.copyfile(path, tmp / path.name)
        for graph, info in manifest["graphs"].items():
            progress(f"quantizing {graph} weights ({spec.scheme}, blocks of {spec.block_size}, {spec.format})")
            proto = onnx.load(str(source / info["file"]))
            quantized[graph] = quantize_graph(proto, spec, int(manifest["model"]["n_embd"]))
            attach_wkv_function(proto, export["wkv_form"], export["wkv_op"])
            facts = {p.key: p.value for p in proto.metadata_props}
            set_metadata(proto, {**facts, "quantize": spec.scheme})
            files = save_checked(proto, tmp / info["file"])
            info.update(
                opset=default_opset(proto), external_data=[f.name for f in files[1:]], sha256={f.name: sha256_file(f) for f in files}
            )
        export["opset"] = manifest["graphs"]["step"]["opset"]
        export["wkv_function_sha256"] = wkv_function_sha256(export["wkv_op"], export["opset"], export["wkv_form"])
        export["quantization"] = quantization_manifest(spec, quantized)
        atomic_write_json(tmp / MANIFEST, manifest)
    progress(f"wrote {out_dir}")
    return manifest
