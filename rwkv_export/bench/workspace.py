"""The files every backend reads, made once and cached: one set of weights in each peer's format.

    <cache>/<key>/model.pth        BlinkDL state dict (the `rwkv` package and the torch reference)
    <cache>/<key>/config.json      its ModelConfig (version, sizes), so backends need not load the weights to know it
    <cache>/<key>/hf/              Hugging Face directory (transformers' RwkvForCausalLM; RWKV-4 only)
    <cache>/<key>/onnx-float32/    `rwkv-export export` outputs, one per dtype
    <cache>/<key>/onnx-float16/

The default source is a deterministic random 169M-shaped model (12 x 768, vocab 50277) of the chosen
version (RWKV-4 unless asked; 5/6/7 with heads of 64 and LoRA rank 32), so the benchmark needs no
download. The vocabulary stays GPT-NeoX's 50277 for every version (the released v5+ models use the
65536-token world vocabulary): the same head and embedding cost, so versions compare on their blocks.
Exports are redone when the WKV body they carry is no longer the exporter's default form for the
version, or no longer today's code of that form (the manifest's function fingerprint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rwkv_export.checkpoint import Checkpoint, ModelConfig, load_checkpoint, save_checkpoint
from rwkv_export.checkpoint.make import check_sizes, random_checkpoint
from rwkv_export.checkpoint.random import DEFAULT_169M
from rwkv_export.checkpoint.versions import require_supported
from rwkv_export.errors import RwkvExportError
from rwkv_export.export.quantize import QUANT_SCHEMES, QuantSpec
from rwkv_export.export.requantize import quantize_export
from rwkv_export.fileio import atomic_write_json, user_cache_dir
from rwkv_export.manifest import Manifest
from rwkv_export.versions import version_info

DEFAULT_SHAPE = (DEFAULT_169M["n_layer"], DEFAULT_169M["n_embd"], DEFAULT_169M["vocab_size"])


def default_cache_dir() -> Path:
    """The bench workspace: `user_cache_dir()/bench` (rwkv_export/fileio.py)."""
    return user_cache_dir("bench")


@dataclass
class Workspace:
    """Paths of one model's files in every format (made on demand by `ensure`)."""

    root: Path
    source: str  # what the user asked for, for the report

    @property
    def pth(self) -> Path:
        return self.root / "model.pth"

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    @property
    def hf_dir(self) -> Path:
        return self.root / "hf"

    def onnx_dir(self, dtype: str) -> Path:
        return self.root / f"onnx-{dtype}"

    def to_dict(self) -> dict[str, str]:
        return {"root": str(self.root), "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Workspace:
        return cls(Path(data["root"]), data["source"])

    def checkpoint(self) -> Checkpoint:
        """model.pth with the source's config (config.json): a .pth cannot carry everything an
        rwkv.cpp or safetensors source says, e.g. a 5.x GroupNorm eps of 1e-5 where a .pth of
        that version is read with 64e-5."""
        ckpt = load_checkpoint(self.pth)
        try:
            source = ModelConfig.from_dict(json.loads(self.config_file.read_text()))
        except (OSError, ValueError, TypeError, RwkvExportError):
            return ckpt
        if source.version == ckpt.config.version:
            extra = source.to_dict()["extra"]
            if extra != ckpt.config.to_dict()["extra"]:
                ckpt = dataclasses.replace(ckpt, config=dataclasses.replace(ckpt.config, **extra))
        return ckpt

    def config(self) -> ModelConfig:
        """model.pth's config, from config.json (written by `ensure`), else by loading the weights."""
        try:
            return ModelConfig.from_dict(json.loads(self.config_file.read_text()))
        except (OSError, ValueError, TypeError, RwkvExportError):
            return self.checkpoint().config

    def version(self) -> str:
        return self.config().version


def random_workspace(
    cache: Path, n_layer: int, n_embd: int, vocab: int, seed: int = 0, version: str = "4", head_size: int | None = None
) -> tuple[Workspace, Callable[[], Checkpoint]]:
    """A random RWKV-`version` of the given shape (float32), keyed by version, shape and seed."""
    head_size, lora = check_sizes(version, n_embd, head_size, None)  # refuse a bad shape before anything is made
    heads = f"-h{head_size}-r{lora or 0}" if head_size else ""
    described = f", heads of {head_size}" if head_size else ""
    ws = Workspace(
        cache / f"random-v{version}-{n_layer}x{n_embd}{heads}-v{vocab}-seed{seed}",
        f"random RWKV-{version} {n_layer} x {n_embd}{described}, vocab {vocab}, seed {seed}",
    )

    def make() -> Checkpoint:
        config, weights = random_checkpoint(version, n_layer, n_embd, vocab, None, head_size, lora, seed)
        return Checkpoint(config, weights, "random", ws.pth)

    return ws, make


def source_workspace(cache: Path, source: str) -> tuple[Workspace, Callable[[], Checkpoint]]:
    """A user checkpoint, keyed by its absolute path, size and mtime (a changed file gets a new key)."""
    path = Path(source).resolve()
    st = path.stat() if path.exists() else None
    key = hashlib.sha1(f"{path}:{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}".encode()).hexdigest()[:10]
    return Workspace(cache / f"{path.stem}-{key}", str(path)), lambda: load_checkpoint(path)


def ensure(
    ws: Workspace, make: Callable[[], Checkpoint], need_hf: bool, dtypes: list[str], progress: Callable[[str], None], fresh: bool = False
) -> Checkpoint:
    """Write whatever of model.pth / config.json / hf / onnx-<dtype> is missing or stale; return the checkpoint.

    need_hf is ignored for RWKV-5/6/7: transformers has no class to read such a directory (its
    backend says so), and the checkpoint stage refuses to write one.
    """
    from rwkv_export.export import default_wkv_form, export_checkpoint

    ws.root.mkdir(parents=True, exist_ok=True)
    if fresh or not ws.pth.is_file():
        progress(f"writing {ws.pth}")
        source = make()
        save_checkpoint(source, ws.pth)
        atomic_write_json(ws.config_file, source.config.to_dict())  # the source's, before .pth drops anything
    ckpt = ws.checkpoint()
    version = ckpt.config.version
    require_supported(version, ws.source)
    if not ws.config_file.is_file():
        atomic_write_json(ws.config_file, ckpt.config.to_dict())
    if need_hf and version_info(version).transformers_class and (fresh or not (ws.hf_dir / "config.json").is_file()):
        progress(f"writing {ws.hf_dir}")
        save_checkpoint(ckpt, ws.hf_dir, "hf")
    form = default_wkv_form(version)
    quantized = [d for d in dtypes if d in QUANT_SCHEMES]
    for dtype in sorted(set(dtypes) - set(quantized) | ({"float32"} if quantized else set())):
        out = ws.onnx_dir(dtype)
        if not fresh and _export_is_current(out, form, dtype):
            continue
        progress(f"exporting {dtype} ONNX graphs to {out} (once; cached)")
        export_checkpoint(ckpt, out, dtype=dtype, force=True, progress=lambda m: progress(f"  {m}"))
    for dtype in quantized:  # int8 / int4: the float32 graphs with their weights quantized (no second trace)
        out = ws.onnx_dir(dtype)
        if fresh or not _export_is_current(out, form, dtype):
            progress(f"quantizing the float32 graphs to {dtype} in {out} (once; cached)")
            quantize_export(ws.onnx_dir("float32"), out, QuantSpec(dtype), force=True, progress=lambda m: progress(f"  {m}"))
    return ckpt


def _export_is_current(out: Path, form: str, dtype: str = "float32") -> bool:
    """The cached export carries today's default form and today's body of it (the function's fingerprint),
    and for int8/int4 today's default quantization."""
    from rwkv_export.export.finalize import wkv_function_sha256

    try:
        export = Manifest.read(out).export
    except RwkvExportError:  # missing, half-written, damaged or older-format: export again
        return False
    quant = {k: v for k, v in (export.quantization or {}).items() if k != "graphs"}
    if quant != (QuantSpec(dtype).to_dict() if dtype in QUANT_SCHEMES else {}):
        return False
    return export.wkv_form == form and export.wkv_function_sha256 == wkv_function_sha256(export.op, export.opset, form)
