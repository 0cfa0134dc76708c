"""Stage 1, checkpoint: any on-disk RWKV checkpoint -> (ModelConfig, BlinkDL-named tensors).

Formats, told apart by content rather than trusted suffixes:
    .pth / .pt        BlinkDL state dict, loaded with torch.load(weights_only=True)
    .safetensors      the same keys; transformers' sharded `model.safetensors.index.json` too
    directory         transformers RwkvForCausalLM (config.json + weights, HF key names)
    rwkv.cpp file     `ggmf` header, versions 100 / 101, FP32 / FP16
The version (4, 5.1, 5.2, 6, 7) and hyper-parameters are read off the keys and shapes; every key
and shape is checked against the version's table (versions.py). What a file claims (key names, block
indices, sizes, zip records, config.json) is checked before anything is allocated from it, and NaN /
Inf weights are refused unless allowed (validate.py). Hugging Face directories exist only
for RWKV-4 (transformers has no v5-v7 class); other model types are refused by name.

`load_checkpoint` reads every tensor; `open_checkpoint` reads only the headers (lazy.py: a `TensorStore`
reads each tensor when asked, so `info` is instant and the export streams a model of any size).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from rwkv_export.checkpoint import hf, rwkvcpp, validate
from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.lazy import SHARD_INDEX, TensorStore, open_tensor_file, safetensors_header_length
from rwkv_export.checkpoint.versions import detect_version, infer_config
from rwkv_export.errors import RwkvExportError
from rwkv_export.fileio import atomic_output_path, atomic_write_json
from rwkv_export.versions import version_info

__all__ = [
    "Checkpoint",
    "ModelConfig",
    "TensorStore",
    "load_checkpoint",
    "open_checkpoint",
    "save_checkpoint",
    "read_tensor_file",
    "FORMATS",
]

FORMATS = ("pth", "safetensors", "hf", "rwkvcpp", "rwkvcpp-fp16")


@dataclass
class Checkpoint:
    """A checkpoint: config, tensors in BlinkDL naming and storage dtype (a dict, or a TensorStore
    that reads each on access), and provenance."""

    config: ModelConfig
    weights: Mapping[str, torch.Tensor]
    format: str
    path: Path

    def shape(self, key: str) -> tuple[int, ...]:
        """A tensor's shape without reading it."""
        weights = self.weights
        return weights.shape(key) if isinstance(weights, TensorStore) else tuple(weights[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        """A tensor's dtype without reading it."""
        weights = self.weights
        return weights.dtype(key) if isinstance(weights, TensorStore) else weights[key].dtype

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(self.shape(k)) for k in self.weights)


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a .pth/.bin (weights_only) or .safetensors file into a dict of tensors with string keys."""
    size = validate.regular_file(path, "checkpoint")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, size)
    if not validate.is_zip(path):
        raise RwkvExportError(f"{path}: not a readable PyTorch checkpoint (not a zip archive; torch.save writes one since torch 1.6)")
    validate.check_zip_sizes(path, size)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 18": the error line below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # the unpickler raises anything (IndexError, KeyError...) on garbage
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise RwkvExportError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RwkvExportError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    validate.check_keys(list(obj), str(path))
    return dict(obj)


def _read_safetensors(path: Path, size: int) -> dict[str, torch.Tensor]:
    """safetensors checks every offset against the file; the header length is checked here first."""
    from safetensors.torch import load_file

    safetensors_header_length(path, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tensors = load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError, ValueError, TypeError of an unsupported dtype...
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise RwkvExportError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    validate.check_keys(list(tensors), str(path))
    return tensors


def load_checkpoint(path: str | os.PathLike[str], allow_nonfinite: bool = False) -> Checkpoint:
    """Load any supported checkpoint; raise RwkvExportError with one line on any problem.

    NaN / Inf weights are refused (naming the tensor) unless `allow_nonfinite`.
    """
    path = Path(path)
    if not path.exists():
        raise RwkvExportError(f"checkpoint '{path}' does not exist")
    if path.name.endswith(".index.json") or _shard_index(path) is not None:
        ckpt = open_checkpoint(path, allow_nonfinite)
        return Checkpoint(ckpt.config, {k: ckpt.weights[k] for k in ckpt.weights}, ckpt.format, ckpt.path)
    if path.is_dir():
        if not hf.is_hf_dir(path):
            raise RwkvExportError(f"{path}: a directory but not a Hugging Face model (no config.json)")
        weights, hf_json = hf.read_hf_dir(path)
        fmt = "hf"
    else:
        validate.regular_file(path, "checkpoint")
        if rwkvcpp.is_rwkvcpp(path):
            raw, header = rwkvcpp.read_rwkvcpp(path)
            weights = rwkvcpp.from_rwkvcpp(raw, detect_version(raw))
            fmt = "rwkvcpp"
        else:
            weights = read_tensor_file(path)
            fmt = "safetensors" if path.suffix == ".safetensors" else "pth"
    config = infer_config(weights, str(path), fmt)
    if fmt == "hf":
        hf.check_config(hf_json, config, str(path / "config.json"))
    elif fmt == "rwkvcpp":
        rwkvcpp.check_header(header, config, str(path))
    if not allow_nonfinite:
        validate.check_finite(weights, str(path))
    return Checkpoint(config, weights, fmt, path)


def open_checkpoint(path: str | os.PathLike[str], allow_nonfinite: bool = False) -> Checkpoint:
    """Like load_checkpoint, reading headers only: .safetensors, a shard index (or a directory holding
    one and no config.json) and .pth give a TensorStore, whose reads refuse NaN / Inf unless
    `allow_nonfinite`; rwkv.cpp files and Hugging Face directories are read whole (as load_checkpoint)."""
    path = _shard_index(Path(path)) or Path(path)
    if not path.exists() or path.is_dir() or rwkvcpp.is_rwkvcpp(path):
        return load_checkpoint(path, allow_nonfinite)
    store = open_tensor_file(path)
    if not allow_nonfinite:
        store = store.checked(str(path))
    fmt = "pth" if path.suffix not in (".safetensors", ".json") else "safetensors"
    return Checkpoint(infer_config(store.meta(), str(path), fmt), store, fmt, path)


def _shard_index(path: Path) -> Path | None:
    """A directory's transformers shard index (a Hugging Face directory, with config.json, is read as one)."""
    index = path / SHARD_INDEX
    return index if path.is_dir() and not hf.is_hf_dir(path) and index.is_file() else None


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """Write `ckpt` as .pth / .safetensors / HF directory / rwkv.cpp file (format from suffix or fmt)."""
    path = Path(path)
    fmt = fmt or _format_from_suffix(path)
    weights = {k: v.contiguous() for k, v in ckpt.weights.items()}
    cfg = ckpt.config
    if fmt == "pth":
        with atomic_output_path(path) as tmp:
            torch.save(weights, tmp)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        with atomic_output_path(path) as tmp:
            save_file(weights, str(tmp))
    elif fmt == "hf":
        from safetensors.torch import save_file

        if version_info(cfg.version).transformers_class is None:
            raise RwkvExportError(
                f"cannot write RWKV-{cfg.version} as a Hugging Face directory: transformers has RwkvForCausalLM (RWKV-4) only"
            )

        path.mkdir(parents=True, exist_ok=True)
        with atomic_output_path(path / "model.safetensors") as tmp:
            save_file({hf.blink_to_hf(k): v for k, v in weights.items()}, str(tmp), metadata={"format": "pt"})
        atomic_write_json(path / "config.json", hf.hf_config(cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.ffn_size))
    elif fmt in ("rwkvcpp", "rwkvcpp-fp16"):
        rwkvcpp.write_rwkvcpp(path, weights, cfg.version, cfg.n_layer, fp16=fmt == "rwkvcpp-fp16")
    else:
        raise RwkvExportError(f"unknown checkpoint format '{fmt}' (expected one of {', '.join(FORMATS)})")
    return fmt


def _format_from_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        return "pth"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".bin":
        return "rwkvcpp"
    if suffix == "":
        return "hf"
    raise RwkvExportError(
        f"cannot tell the checkpoint format from '{path.name}': use .pth, .safetensors, .bin (rwkv.cpp) or a directory (HF)"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
