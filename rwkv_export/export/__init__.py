"""Stage 3, export: a checkpoint -> DIR/{prefill.onnx, step.onnx, manifest.json} (+ weights.data).

Streamed: the checkpoint is opened by its headers (checkpoint/lazy.py), the model is built as a
skeleton whose matrices are meta tensors, its three pieces are traced once each with the weights as
inputs (pieces.py: embed, a block, logits: export time is one block's, not the model's), stamped
into the prefill graph per block (assemble.py), and the step graph is the prefill graph at T = 1
(step.py). Then the weights are written one tensor at a time straight from the checkpoint
(weights.py): above `external_data_threshold` bytes into one `weights.data` both graphs share, below
it inline in each graph. Peak memory is about one tensor's, whatever the model's size.

Each graph gets the WKV op's function (rwkv::WKV4 for RWKV-4, rwkv::WKV5 for 5.1/5.2, rwkv::WKV6,
rwkv::WKV7) and metadata (finalize.py), and the export is described in manifest.json
(rwkv_export.manifest, the typed contract every later stage reads). A state whose initial value is
not a constant (a v6 checkpoint's `time_state`) is written as DIR/initial_<name>.npy and named by
the manifest (spec.py). The directory is assembled in a temporary sibling and renamed into place
only when everything succeeded. A quantized export (--quantize) rewrites the prefill graph's matrices
before the step graph is derived from it, knowing only their shapes (quantize.py), and quantizes each
matrix a slab at a time as it is read (qblocks.py): the same memory as a float export.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rwkv_export import __version__
from rwkv_export.checkpoint import Checkpoint, ModelConfig, open_checkpoint
from rwkv_export.checkpoint.versions import expected_shapes, require_supported
from rwkv_export.errors import RwkvExportError
from rwkv_export.export.assemble import WeightEntry, assemble_prefill
from rwkv_export.export.finalize import (
    EXTERNAL_DATA_THRESHOLD,
    attach_wkv_function,
    default_opset,
    save_checked,
    set_metadata,
    wkv_function_sha256,
)
from rwkv_export.export.pieces import trace_pieces
from rwkv_export.export.qblocks import QuantizedWeight
from rwkv_export.export.quantize import QuantSpec, drop_unused_initializers, plan_quantization, quantization_manifest, quantization_summary
from rwkv_export.export.spec import GRAPHS, GraphSpec, graph_spec
from rwkv_export.export.step import step_from_prefill
from rwkv_export.export.weights import WEIGHTS_FILE, WeightSource, write_weights
from rwkv_export.fileio import atomic_directory, sha256_file
from rwkv_export.manifest import (
    FORMAT,
    MANIFEST,
    ExportOptions,
    Graph,
    Manifest,
    ModelInfo,
    Source,
    StateSpec,
    TokenizerInfo,
    read_manifest,
)
from rwkv_export.model import RWKVModel, build_model
from rwkv_export.model.base import TOP_KEYS, buffer_name
from rwkv_export.ops.onnx_builder import MIN_OPSET
from rwkv_export.ops.registry import ALL_BODIES, DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION, op_spec
from rwkv_export.versions import version_info

__all__ = ["EXPORT_DTYPES", "ExportResult", "default_wkv_form", "export_checkpoint", "read_manifest", "MANIFEST", "tokenizer_info"]

EXPORT_DTYPES = ("float32", "float16")
TOKENIZER_FILE = "tokenizer.json"
ALL_FORMS = ALL_BODIES  # every op's ONNX function bodies (--wkv-form)


@dataclass
class ExportResult:
    directory: Path
    manifest: dict[str, Any]  # manifest.json as written (typed: Manifest.read(directory))
    seconds: float


def package_versions() -> dict[str, str]:
    versions = {"rwkv-export": __version__, "python": platform.python_version()}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


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


def default_wkv_form(version: str) -> str:
    """The WKV function body an export of RWKV-`version` carries unless --wkv-form says otherwise."""
    return op_spec(version_info(version).op).default_body


def export_checkpoint(
    checkpoint: str | Path | Checkpoint,
    out_dir: str | Path,
    dtype: str = "float32",
    opset: int | None = None,
    all_logits: bool = False,
    force: bool = False,
    wkv_form: str | None = None,
    tokenizer: str | Path | None = None,
    progress: Callable[[str], None] = lambda message: None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    quantize: QuantSpec | None = None,
    progress_bar: bool = False,
) -> ExportResult:
    """Export prefill and step graphs of `checkpoint` into `out_dir` (see the module docstring)."""
    start = time.perf_counter()
    _check_options(dtype, wkv_form, opset, quantize)
    tokenizer_path = _find_tokenizer(checkpoint, tokenizer)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise RwkvExportError(f"output directory '{out_dir}' already exists; pass --force to replace it")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else open_checkpoint(checkpoint)
    cfg = ckpt.config
    op, wkv_form = _op_and_form(cfg.version, wkv_form)
    progress(f"opened {ckpt.path} (RWKV-{cfg.version}, {cfg.n_layer} x {cfg.n_embd}, vocab {cfg.vocab_size}, {ckpt.format})")
    model = build_model(_skeleton(ckpt), dtype)  # matrices as meta tensors: names, shapes and dtypes only
    head_info = _head_state_info(model, op)
    tok_info = tokenizer_info(cfg.vocab_size, tokenizer_path is not None)
    graphs: dict[str, Graph] = {}
    quantized: dict[str, Any] = {}
    with atomic_directory(out_dir, force=force) as tmp:
        job = _Job(cfg, dtype, wkv_form, op, head_info, _write_initial_state(model, tmp), quantize, tok_info["kind"], progress)
        progress(f"tracing the model's pieces: embed, block 0{', block 1' if cfg.n_layer > 1 else ''}, logits ({dtype})")
        pieces = trace_pieces(model, opset, all_logits)
        keys = [{buffer_name(k): k for k in ckpt.weights if k.startswith(f"blocks.{i}.")} for i in range(cfg.n_layer)]
        top = {k.replace(".", "_"): k for k in TOP_KEYS}
        halves = [model.halves_after(i) for i in range(cfg.n_layer)]
        spec = graph_spec("prefill", cfg, all_logits, job.initial_files)
        prefill, entries = assemble_prefill(pieces, spec, cfg.n_layer, halves, keys, top, np.dtype(str(model.dtype).replace("torch.", "")))
        source = WeightSource(model, ckpt, keys, top)
        entries, plans, counts = _plan(prefill, entries, source, quantize, cfg.n_embd)
        protos = {"prefill": prefill, "step": step_from_prefill(prefill)}  # the step graph: prefill at T = 1 (step.py)
        total = sum(plans[e.name].nbytes if e.name in plans else source.estimate(e) for e in entries)
        shared = total > external_data_threshold
        if not shared and total > INLINE_LIMIT:
            raise RwkvExportError(f"{total / 1e9:.1f} GB of weights cannot be inline (a graph file holds at most 2 GB): use shared weights")
        progress(
            f"writing {len(entries)} weight tensors {'to ' + WEIGHTS_FILE if shared else 'into both graphs'} ({_weights_kind(dtype, quantize)})"
        )
        digest = write_weights(entries, source, list(protos.values()), tmp / WEIGHTS_FILE if shared else None, progress_bar, plans)
        data = {WEIGHTS_FILE: digest} if digest is not None else {}
        if quantize is not None:
            quantized = {graph: quantization_summary(proto, plans, counts) for graph, proto in protos.items()}
        for graph in GRAPHS:
            spec = graph_spec(graph, cfg, all_logits and graph == "prefill", job.initial_files)
            graphs[graph] = _finish_graph(job, graph, spec, protos[graph], tmp / f"{graph}.onnx", external_data_threshold, data)
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
            tok_info["sha256"] = sha256_file(tmp / TOKENIZER_FILE)
        typed = _manifest(job, ckpt, model, graphs, tok_info, all_logits, quantized, tmp)
        typed.write(tmp)
        manifest = typed.to_dict()
    seconds = time.perf_counter() - start
    progress(f"wrote {out_dir} in {seconds:.1f} s")
    return ExportResult(out_dir, manifest, seconds)


INLINE_LIMIT = 1_800_000_000  # bytes: a protobuf message (an inline graph file) cannot exceed 2 GiB


def _plan(
    prefill: Any, entries: list[WeightEntry], source: WeightSource, quantize: QuantSpec | None, n_embd: int
) -> tuple[list[WeightEntry], dict[str, QuantizedWeight], dict[str, dict[str, int]]]:
    """Rewrite the prefill graph's quantized matrices (before the step graph is derived from it) and
    drop the float initializers nothing reads now: the weights' shapes are enough (quantize.py).
    Returns the entries still to write, how each quantized one is stored, and the counts per role."""
    if quantize is None:
        return entries, {}, {}
    shapes = {e.name: shape for e in entries if (shape := source.shape(e)) is not None}
    plans, counts = plan_quantization(prefill, quantize, n_embd, shapes)
    drop_unused_initializers(prefill.graph)
    used = {t.name for t in prefill.graph.initializer}
    return [e for e in entries if e.name in used or e.name in plans], plans, counts


def _weights_kind(dtype: str, quantize: QuantSpec | None) -> str:
    return dtype if quantize is None else f"{dtype}, matrices {quantize.scheme} in blocks of {quantize.block_size}, {quantize.format}"


def _skeleton(ckpt: Checkpoint) -> Checkpoint:
    """The checkpoint as meta tensors (shape and dtype, no data): enough to trace the pieces. The
    version's optional tensors (a v6 `time_state`: the initial state, not a graph weight) are read."""
    _, optional = expected_shapes(ckpt.config)
    meta = {k: torch.empty(ckpt.shape(k), dtype=ckpt.dtype(k), device="meta") for k in ckpt.weights if k not in optional}
    return Checkpoint(ckpt.config, {k: meta[k] if k in meta else ckpt.weights[k] for k in ckpt.weights}, ckpt.format, ckpt.path)


def _check_options(dtype: str, wkv_form: str | None, opset: int | None, quantize: QuantSpec | None) -> None:
    """The options that need no checkpoint: raises RwkvExportError (or the QuantSpec's error) naming the bad one."""
    if dtype not in EXPORT_DTYPES:
        raise RwkvExportError(f"unknown export dtype '{dtype}' (expected one of {', '.join(EXPORT_DTYPES)})")
    if wkv_form is not None and wkv_form not in ALL_FORMS:
        raise RwkvExportError(f"unknown WKV form '{wkv_form}' (expected one of {', '.join(ALL_FORMS)})")
    if opset is not None and opset < MIN_OPSET:
        raise RwkvExportError(f"opset {opset} is too old: the WKV function bodies need opset >= {MIN_OPSET}")
    if quantize is not None:
        quantize.check(dtype)


def _op_and_form(version: str, wkv_form: str | None) -> tuple[str, str]:
    """The version's WKV op and the body to export (the version's default when `wkv_form` is None)."""
    require_supported(version)  # every known version exports; kept for versions added to loading first
    op = version_info(version).op
    forms = op_spec(op).bodies
    wkv_form = wkv_form or default_wkv_form(version)
    if wkv_form not in forms:
        raise RwkvExportError(f"WKV form '{wkv_form}' is not available for RWKV-{version} ({op}); its forms: {', '.join(forms)}")
    return op, wkv_form


@dataclass(frozen=True)
class _Job:
    """What every graph of one export shares."""

    cfg: ModelConfig
    dtype: str
    wkv_form: str
    op: str
    head_info: dict[str, Any]
    initial_files: dict[str, str]
    quantize: QuantSpec | None
    tokenizer_kind: str
    progress: Callable[[str], None]


def _finish_graph(
    job: _Job,
    graph: str,
    spec: GraphSpec,
    proto: Any,
    path: Path,
    external_data_threshold: int,
    shared: dict[str, str],
) -> Graph:
    """Attach the WKV function, stamp the metadata, check and save `proto` as `path`; its manifest entry."""
    cfg, quantize = job.cfg, job.quantize
    n_wkv = attach_wkv_function(proto, job.wkv_form, job.op)
    set_metadata(proto, {
        "rwkv_export.format": FORMAT, "rwkv_export.graph": graph, "rwkv.version": cfg.version,
        "rwkv.n_layer": cfg.n_layer, "rwkv.n_embd": cfg.n_embd, "rwkv.vocab_size": cfg.vocab_size,
        "rwkv.ffn_size": cfg.ffn_size, "dtype": job.dtype, "wkv_form": job.wkv_form,
        "state_inputs": [t.name for t in spec.inputs if t.role == "state"],
        "state_map": {t.name: t.feeds for t in spec.outputs if t.feeds},
        "state_initial": {t.name: t.initial for t in spec.inputs if t.role == "state"},
        **({"state_initial_files": job.initial_files} if job.initial_files else {}),
        **{f"rwkv.{k}": v for k, v in job.head_info.items()},
        **({"wkv_op": job.op} if job.head_info else {}),
        **({"quantize": quantize.scheme} if quantize is not None else {}),
        "tokenizer": job.tokenizer_kind,
    })  # fmt: skip
    job.progress(f"checking and saving {path.name} ({n_wkv} rwkv::{job.op} nodes)")
    # a graph whose weights are already in the shared file keeps only small constants inline
    files = save_checked(proto, path, INLINE_LIMIT if shared else external_data_threshold)
    return Graph(
        file=path.name,
        opset=default_opset(proto),
        wkv_nodes=n_wkv,
        external_data=(*shared, *(f.name for f in files[1:])),
        sha256={f.name: sha256_file(f) for f in files} | shared,
        inputs=spec.inputs,
        outputs=spec.outputs,
    )


def _manifest(
    job: _Job,
    ckpt: Checkpoint,
    model: RWKVModel,
    graphs: dict[str, Graph],
    tok_info: dict[str, Any],
    all_logits: bool,
    quantized: dict[str, Any],
    directory: Path,
) -> Manifest:
    """The export's manifest (its state's initial files are read from `directory`)."""
    cfg, quantize, opset = job.cfg, job.quantize, graphs["step"].opset
    return Manifest(
        model=ModelInfo(cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.ffn_size, ckpt.parameter_count, **job.head_info),
        source=Source(str(ckpt.path), ckpt.format, cfg.dtype),
        dtype=job.dtype,
        graphs=graphs,
        state=_state_specs(cfg, job.initial_files, directory),
        tokenizer=TokenizerInfo(**tok_info),
        export=ExportOptions(
            dtype=job.dtype,
            opset=opset,
            all_logits=all_logits,
            wkv_form=job.wkv_form,
            wkv_function_sha256=wkv_function_sha256(job.op, opset, job.wkv_form),
            rescale_every=model.rescale_every,
            wkv_domain=DOMAIN,
            wkv_op=job.op,
            plugin_namespace=PLUGIN_NAMESPACE,
            plugin_version=PLUGIN_VERSION,
            quantization=quantization_manifest(quantize, quantized) if quantize is not None else None,
        ),
        versions=package_versions(),
    )


def _state_specs(cfg: Any, initial_files: dict[str, str], directory: Path) -> tuple[StateSpec, ...]:
    """The step graph's state inputs, each with the output that feeds it (and its initial file's sha256)."""
    out = []
    for t in graph_spec("step", cfg, initial_files=initial_files).inputs:
        if t.role == "state":
            digest = sha256_file(directory / t.initial_file) if t.initial_file else None
            out.append(
                StateSpec(
                    name=t.name,
                    dtype=t.dtype,
                    shape=tuple(t.shape),
                    initial=float(t.initial or 0.0),
                    output=t.name + "_out",
                    initial_file=t.initial_file,
                    initial_sha256=digest,
                )
            )
    return tuple(out)


def _head_state_info(model: RWKVModel, op: str) -> dict[str, Any]:
    """What a runtime of an op with a per-head state (WKV5/6/7) needs beyond the model's sizes
    (empty for an op whose state is per channel: WKV4)."""
    layout = op_spec(op).state_layout
    if layout is None:
        return {}
    return {"n_head": model.n_head, "head_size": model.head_size, "group_norm_eps": model.eps, "wkv_state_layout": layout}


def _write_initial_state(model: RWKVModel, directory: Path) -> dict[str, str]:
    """Write each state tensor whose initial value is not the registry's constant (a v6 `time_state`)
    as DIR/initial_<name>.npy, float32 with a batch axis of 1; return name -> file name."""
    constants = version_info(model.config.version).state_initial
    files = {}
    for name, tensor in model.initial_state(1)._asdict().items():
        value = tensor.to(torch.float32).numpy()
        if np.any(value != np.float32(constants[name])):
            files[name] = f"initial_{name}.npy"
            np.save(directory / files[name], value)
    return files


def _find_tokenizer(checkpoint: str | Path | Checkpoint, tokenizer: str | Path | None) -> Path | None:
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.is_file():
            raise RwkvExportError(f"tokenizer file '{path}' does not exist")
        return path
    source = checkpoint.path if isinstance(checkpoint, Checkpoint) else Path(checkpoint)
    candidate = source / TOKENIZER_FILE if source.is_dir() else None
    return candidate if candidate is not None and candidate.is_file() else None
