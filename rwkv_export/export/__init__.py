"""Stage 3, export: a checkpoint -> DIR/{prefill.onnx, step.onnx, manifest.json}.

Both graphs are traced from the reference model (trace.py), get the rwkv::WKV4 function and metadata
(finalize.py), and are described in manifest.json (manifest.py). The directory is assembled in a
temporary sibling and renamed into place only when everything succeeded.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custom_ops.wkv4_onnx import DEFAULT_FORM, FORMS, MIN_OPSET
from rwkv_export.checkpoint import Checkpoint, load_checkpoint
from rwkv_export.checkpoint.versions import EXPORT_VERSIONS
from rwkv_export.errors import RwkvExportError
from rwkv_export.export.finalize import EXTERNAL_DATA_THRESHOLD, attach_wkv_function, default_opset, save_checked, set_metadata
from rwkv_export.export.manifest import FORMAT, MANIFEST, package_versions, read_manifest
from rwkv_export.export.spec import GRAPHS, graph_spec
from rwkv_export.export.trace import trace_graph
from rwkv_export.fileio import atomic_directory, atomic_write_json, sha256_file
from rwkv_export.model import build_model

__all__ = ["EXPORT_DTYPES", "ExportResult", "export_checkpoint", "read_manifest", "MANIFEST", "tokenizer_info"]

EXPORT_DTYPES = ("float32", "float16")
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class ExportResult:
    directory: Path
    manifest: dict[str, Any]
    seconds: float


def tokenizer_info(vocab_size: int, has_file: bool) -> dict[str, Any]:
    """What tokenizer the model expects (the runtime stage loads it)."""
    if has_file:
        return {"kind": "huggingface", "file": TOKENIZER_FILE}
    if vocab_size == 256:
        return {"kind": "bytes", "file": None}
    if vocab_size == 65536:
        return {"kind": "world", "file": None}
    if vocab_size in (50277, 50304):
        return {"kind": "gpt-neox-20b", "file": None, "hint": "pass --tokenizer 20B_tokenizer.json"}
    return {"kind": "none", "file": None}


def export_checkpoint(
    checkpoint: str | Path | Checkpoint,
    out_dir: str | Path,
    dtype: str = "float32",
    opset: int | None = None,
    all_logits: bool = False,
    force: bool = False,
    wkv_form: str = DEFAULT_FORM,
    tokenizer: str | Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> ExportResult:
    """Export prefill and step graphs of `checkpoint` into `out_dir` (see the module docstring)."""
    start = time.perf_counter()
    if dtype not in EXPORT_DTYPES:
        raise RwkvExportError(f"unknown export dtype '{dtype}' (expected one of {', '.join(EXPORT_DTYPES)})")
    if wkv_form not in FORMS:
        raise RwkvExportError(f"unknown WKV form '{wkv_form}' (expected one of {', '.join(FORMS)})")
    if opset is not None and opset < MIN_OPSET:
        raise RwkvExportError(f"opset {opset} is too old: the WKV4 function body needs opset >= {MIN_OPSET}")
    tokenizer_path = _find_tokenizer(checkpoint, tokenizer)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise RwkvExportError(f"output directory '{out_dir}' already exists; pass --force to replace it")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    cfg = ckpt.config
    if cfg.version not in EXPORT_VERSIONS:  # v5-v7 load and run as references; their graphs come later
        raise RwkvExportError(f"export of RWKV-{cfg.version} is not supported yet; RWKV-{', '.join(EXPORT_VERSIONS)} only")
    progress(f"loaded {ckpt.path} (RWKV-{cfg.version}, {cfg.n_layer} x {cfg.n_embd}, vocab {cfg.vocab_size}, {ckpt.format})")
    model = build_model(ckpt, dtype)
    tok_info = tokenizer_info(cfg.vocab_size, tokenizer_path is not None)
    graphs: dict[str, Any] = {}
    with atomic_directory(out_dir, force=force) as tmp:
        for graph in GRAPHS:
            spec = graph_spec(graph, cfg, all_logits and graph == "prefill")
            progress(f"tracing {graph} graph ({dtype})")
            proto = trace_graph(model, spec, opset, all_logits and graph == "prefill")
            n_wkv = attach_wkv_function(proto, wkv_form)
            set_metadata(proto, {
                "rwkv_export.format": FORMAT, "rwkv_export.graph": graph, "rwkv.version": cfg.version,
                "rwkv.n_layer": cfg.n_layer, "rwkv.n_embd": cfg.n_embd, "rwkv.vocab_size": cfg.vocab_size,
                "rwkv.ffn_size": cfg.ffn_size, "dtype": dtype, "wkv_form": wkv_form,
                "state_inputs": [t.name for t in spec.inputs if t.role == "state"],
                "state_map": {t.name: t.feeds for t in spec.outputs if t.feeds},
                "state_initial": {t.name: t.initial for t in spec.inputs if t.role == "state"},
                "tokenizer": tok_info["kind"],
            })  # fmt: skip
            progress(f"checking and saving {graph}.onnx ({n_wkv} rwkv::WKV4 nodes)")
            files = save_checked(proto, tmp / f"{graph}.onnx", external_data_threshold)
            graphs[graph] = {
                "file": f"{graph}.onnx",
                "opset": default_opset(proto),
                "wkv_nodes": n_wkv,
                "external_data": [f.name for f in files[1:]],
                "sha256": {f.name: sha256_file(f) for f in files},
                "inputs": [t.to_dict() for t in spec.inputs],
                "outputs": [t.to_dict() for t in spec.outputs],
            }
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
            tok_info["sha256"] = sha256_file(tmp / TOKENIZER_FILE)
        manifest = {
            "format": FORMAT,
            "model": {"version": cfg.version, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
                      "vocab_size": cfg.vocab_size, "ffn_size": cfg.ffn_size, "parameters": ckpt.parameter_count},
            "source": {"path": str(ckpt.path), "format": ckpt.format, "dtype": cfg.dtype},
            "dtype": dtype,
            "graphs": graphs,
            "state": [{**t.to_dict(), "output": t.name + "_out"} for t in graph_spec("step", cfg).inputs if t.role == "state"],
            "dynamic_dims": ["batch", "seq"],
            "tokenizer": tok_info,
            "export": {"dtype": dtype, "opset": graphs["step"]["opset"], "all_logits": all_logits, "wkv_form": wkv_form,
                       "rescale_every": model.rescale_every, "wkv_domain": "rwkv", "wkv_op": "WKV4",
                       "plugin_namespace": "rwkv", "plugin_version": "1"},
            "versions": package_versions(),
        }  # fmt: skip
        atomic_write_json(tmp / MANIFEST, manifest)
    seconds = time.perf_counter() - start
    progress(f"wrote {out_dir} in {seconds:.1f} s")
    return ExportResult(out_dir, manifest, seconds)


def _find_tokenizer(checkpoint: str | Path | Checkpoint, tokenizer: str | Path | None) -> Path | None:
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.is_file():
            raise RwkvExportError(f"tokenizer file '{path}' does not exist")
        return path
    source = checkpoint.path if isinstance(checkpoint, Checkpoint) else Path(checkpoint)
    candidate = source / TOKENIZER_FILE if source.is_dir() else None
    return candidate if candidate is not None and candidate.is_file() else None
