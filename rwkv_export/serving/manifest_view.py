"""The few facts serving reads from manifest.json, each behind one small function.

Everything in `rwkv_export.serving` reads the manifest through these, so a typed manifest API
replaces this module alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

Manifest = dict[str, Any]
BATCH = "batch"  # the symbolic batch dim in manifest shapes


def state_specs(manifest: Manifest) -> list[dict[str, Any]]:
    """Every state tensor, in graph order: name, output, dtype, shape (with "batch"), initial or initial_file."""
    return list(manifest["state"])


def graph_io(manifest: Manifest, graph: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of one graph ("prefill" or "step"), each with name, dtype, shape and role."""
    info = manifest["graphs"][graph]
    return list(info["inputs"]), list(info["outputs"])


def graph_file(manifest: Manifest, graph: str) -> str:
    return str(manifest["graphs"][graph]["file"])


def external_files(manifest: Manifest, graph: str) -> list[str]:
    return list(manifest["graphs"][graph].get("external_data", []))


def engine_entry(manifest: Manifest, graph: str) -> dict[str, Any] | None:
    """The TensorRT engine `build` recorded for a graph (file, target, plugin), or None."""
    return manifest.get("engines", {}).get(graph)


def model_summary(manifest: Manifest) -> dict[str, Any]:
    """What a state file records about its model: version, sizes, vocab and the export dtype."""
    model = manifest["model"]
    return {"version": str(model["version"]), "n_layer": int(model["n_layer"]), "n_embd": int(model["n_embd"]),
            "vocab_size": int(model["vocab_size"]), "dtype": str(manifest["dtype"])}


def describe(summary: dict[str, Any]) -> str:
    return f"RWKV-{summary['version']} {summary['n_layer']}x{summary['n_embd']} vocab {summary['vocab_size']} {summary['dtype']}"


def fingerprint(manifest: Manifest) -> str:
    """sha256 over the sha256 of every graph file (and initial-state file) the manifest lists: the
    identity of an export. Two exports of the same checkpoint with the same options share it."""
    h = hashlib.sha256()
    for graph in sorted(manifest["graphs"]):
        for name, digest in sorted(manifest["graphs"][graph]["sha256"].items()):
            h.update(f"{graph}/{name}={digest}\n".encode())
    for spec in state_specs(manifest):
        if spec.get("initial_sha256"):
            h.update(f"state/{spec['name']}={spec['initial_sha256']}\n".encode())
    return h.hexdigest()


def batch_axis(spec: dict[str, Any]) -> int:
    return list(spec["shape"]).index(BATCH)


def concrete_shape(spec: dict[str, Any], batch: int) -> tuple[int, ...]:
    return tuple(batch if d == BATCH else int(d) for d in spec["shape"])


def initial_value(directory: str | Path, spec: dict[str, Any]) -> np.ndarray:
    """One state tensor's initial value for one row: shape with batch = 1 (a constant or its initial_file)."""
    shape = concrete_shape(spec, 1)
    dtype = np.dtype(spec["dtype"])
    if spec.get("initial_file"):
        return np.ascontiguousarray(np.broadcast_to(np.load(Path(directory) / spec["initial_file"]).astype(dtype), shape))
    return np.full(shape, spec["initial"], dtype=dtype)
