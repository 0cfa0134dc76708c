"""The files every backend reads, made once and cached: one set of weights in each peer's format.

    <cache>/<key>/model.pth        BlinkDL state dict (the `rwkv` package and the torch reference)
    <cache>/<key>/hf/              Hugging Face directory (transformers' RwkvForCausalLM)
    <cache>/<key>/onnx-float32/    `rwkv-export export` outputs, one per dtype
    <cache>/<key>/onnx-float16/

The default source is a deterministic random 169M-shaped RWKV-4 (12 x 768, vocab 50277), so the
benchmark needs no download. Exports are redone when the WKV body form they carry is no longer the
exporter's default (another engineer may have changed it since the cache was filled).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rwkv_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rwkv_export.checkpoint.random import DEFAULT_169M, random_v4_weights
from rwkv_export.errors import RwkvExportError
from rwkv_export.export import read_manifest

DEFAULT_SHAPE = (DEFAULT_169M["n_layer"], DEFAULT_169M["n_embd"], DEFAULT_169M["vocab_size"])


def default_cache_dir() -> Path:
    """$RWKV_EXPORT_CACHE, else $XDG_CACHE_HOME/rwkv-export/bench, else ~/.cache/rwkv-export/bench."""
    if os.environ.get("RWKV_EXPORT_CACHE"):
        return Path(os.environ["RWKV_EXPORT_CACHE"]) / "bench"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "rwkv-export" / "bench"


@dataclass
class Workspace:
    """Paths of one model's files in every format (made on demand by `ensure`)."""

    root: Path
    source: str  # what the user asked for, for the report

    @property
    def pth(self) -> Path:
        return self.root / "model.pth"

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
        return load_checkpoint(self.pth)


def random_workspace(cache: Path, n_layer: int, n_embd: int, vocab: int, seed: int = 0) -> tuple[Workspace, Callable[[], Checkpoint]]:
    """A random RWKV-4 of the given shape (float32), keyed by shape and seed."""
    ws = Workspace(cache / f"random-v4-{n_layer}x{n_embd}-v{vocab}-seed{seed}", f"random RWKV-4 {n_layer} x {n_embd}, vocab {vocab}, seed {seed}")

    def make() -> Checkpoint:
        config, weights = random_v4_weights(n_layer, n_embd, vocab, None, seed)
        return Checkpoint(config, weights, "random", ws.pth)

    return ws, make


def source_workspace(cache: Path, source: str) -> tuple[Workspace, Callable[[], Checkpoint]]:
    """A user checkpoint, keyed by its absolute path, size and mtime (a changed file gets a new key)."""
    path = Path(source).resolve()
    st = path.stat() if path.exists() else None
    key = hashlib.sha1(f"{path}:{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}".encode()).hexdigest()[:10]
    return Workspace(cache / f"{path.stem}-{key}", str(path)), lambda: load_checkpoint(path)


def ensure(ws: Workspace, make: Callable[[], Checkpoint], need_hf: bool, dtypes: list[str],
           progress: Callable[[str], None], fresh: bool = False) -> Checkpoint:
    """Write whatever of model.pth / hf / onnx-<dtype> is missing or stale; return the checkpoint."""
    from custom_ops.wkv4_onnx import DEFAULT_FORM
    from rwkv_export.export import export_checkpoint

    ws.root.mkdir(parents=True, exist_ok=True)
    if fresh or not ws.pth.is_file():
        progress(f"writing {ws.pth}")
        save_checkpoint(make(), ws.pth)
    ckpt = ws.checkpoint()
    if ckpt.config.version != "4":
        raise RwkvExportError(f"{ws.source}: bench measures RWKV-4 checkpoints (its limits and the rwkv::WKV4 export); "
                              f"this one is RWKV-{ckpt.config.version}")
    if need_hf and (fresh or not (ws.hf_dir / "config.json").is_file()):
        progress(f"writing {ws.hf_dir}")
        save_checkpoint(ckpt, ws.hf_dir, "hf")
    for dtype in dtypes:
        out = ws.onnx_dir(dtype)
        if not fresh and _export_is_current(out, DEFAULT_FORM):
            continue
        progress(f"exporting {dtype} ONNX graphs to {out} (once; cached)")
        export_checkpoint(ckpt, out, dtype=dtype, force=True, progress=lambda m: progress(f"  {m}"))
    return ckpt


def _export_is_current(out: Path, form: str) -> bool:
    try:
        return read_manifest(out)["export"]["wkv_form"] == form
    except (RwkvExportError, KeyError, TypeError):  # missing, half-written or older-format: export again
        return False
