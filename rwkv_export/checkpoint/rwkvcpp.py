"""rwkv.cpp model files (`ggmf` magic, format versions 100 and 101, FP32 / FP16 tensors).

Layout (little-endian): header of six int32 (magic 0x67676d66, version, n_vocab, n_embed, n_layer,
data type), then records to the end of the file: int32 n_dims, int32 key length, int32 dtype
(0 FP32, 1 FP16), n_dims int32 dims in reversed PyTorch order, the UTF-8 key, the raw data.
rwkv.cpp's converter squeezes `.time_*` tensors and changes some per version (the tiny models'
README lists them): v4 time_decay as -exp(d); v5 time_decay as exp(-exp(d)) and 5.1's time_first as
exp(u); v6 LoRA matrices transposed; v7 x_r..x_g packed into x_rwkvag and LoRAs transposed. Reading
undoes them (BlinkDL form out), writing applies them (so files round-trip through rwkv.cpp's tools).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import torch

from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.validate import check_keys
from rwkv_export.errors import RwkvExportError, first_line
from rwkv_export.fileio import atomic_write_bytes

MAGIC = 0x67676D66
VERSIONS = (100, 101)
_HEADER = struct.Struct("<6i")
_DTYPES = {0: np.float32, 1: np.float16}
_QUANTIZED = {2: "Q4_0", 3: "Q4_1", 7: "Q5_0", 8: "Q5_1", 9: "Q8_0"}


def is_rwkvcpp(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and struct.unpack("<i", head)[0] == MAGIC


def read_rwkvcpp(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Return (BlinkDL-form RWKV-4 tensors or raw tensors for other versions, header dict)."""
    data = path.read_bytes()
    if len(data) < _HEADER.size:
        raise RwkvExportError(f"{path}: truncated rwkv.cpp file ({len(data)} bytes, header needs {_HEADER.size})")
    magic, version, n_vocab, n_embed, n_layer, data_type = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise RwkvExportError(f"{path}: not an rwkv.cpp file (magic {magic:#x}, expected {MAGIC:#x})")
    if version not in VERSIONS:
        raise RwkvExportError(f"{path}: rwkv.cpp format version {version} is not supported (expected 100 or 101)")
    header = {"version": version, "n_vocab": n_vocab, "n_embed": n_embed, "n_layer": n_layer, "data_type": data_type}
    raw: dict[str, torch.Tensor] = {}
    offset = _HEADER.size
    while offset < len(data):
        offset, key, tensor = _read_record(data, offset, path)
        if key in raw:
            raise RwkvExportError(f"{path}: '{key}' appears twice in the rwkv.cpp file")
        raw[key] = tensor
    check_keys(raw, str(path))
    return raw, header


def _read_record(data: bytes, offset: int, path: Path) -> tuple[int, str, torch.Tensor]:
    """One record; every size it claims is checked against the bytes left before anything is read."""
    if offset + 12 > len(data):
        raise RwkvExportError(f"{path}: truncated rwkv.cpp file (record header at byte {offset})")
    n_dims, key_len, dtype_code = struct.unpack_from("<3i", data, offset)
    start, offset = offset, offset + 12
    if not 1 <= n_dims <= 3 or key_len <= 0 or key_len > 1024:
        raise RwkvExportError(f"{path}: corrupt rwkv.cpp record at byte {start} (n_dims={n_dims}, key length={key_len})")
    if offset + 4 * n_dims + key_len > len(data):
        raise RwkvExportError(f"{path}: truncated rwkv.cpp file (record at byte {start} runs past the end)")
    dims = struct.unpack_from(f"<{n_dims}i", data, offset)
    offset += 4 * n_dims
    try:
        key = data[offset : offset + key_len].decode("utf-8")
    except UnicodeDecodeError:
        raise RwkvExportError(f"{path}: corrupt rwkv.cpp record at byte {start} (key is not UTF-8)") from None
    offset += key_len
    if min(dims) < 1:
        raise RwkvExportError(f"{path}: '{key}' has dims {list(dims)} (rwkv.cpp record at byte {start}); each must be >= 1")
    if dtype_code in _QUANTIZED:
        raise RwkvExportError(f"{path}: '{key}' is quantized ({_QUANTIZED[dtype_code]}); only FP32 and FP16 rwkv.cpp files load")
    if dtype_code not in _DTYPES:
        raise RwkvExportError(f"{path}: '{key}' has unknown rwkv.cpp data type {dtype_code}")
    np_dtype = _DTYPES[dtype_code]
    count = int(np.prod(dims, dtype=np.int64))
    nbytes = count * np.dtype(np_dtype).itemsize
    if offset + nbytes > len(data):
        raise RwkvExportError(f"{path}: truncated rwkv.cpp file ('{key}' needs {nbytes} bytes at byte {offset})")
    array = np.frombuffer(data, np_dtype, count, offset).reshape(tuple(reversed(dims)))
    return offset + nbytes, key, torch.from_numpy(array.copy())


def check_header(header: dict[str, int], config: ModelConfig, where: str) -> None:
    """The header's n_vocab / n_embed / n_layer must be those of the tensors."""
    for field, value in (("n_vocab", config.vocab_size), ("n_embed", config.n_embd), ("n_layer", config.n_layer)):
        if header[field] != value:
            raise RwkvExportError(f"{where}: rwkv.cpp header says {field} {header[field]} but the tensors have {value}")


def from_rwkvcpp(raw: dict[str, torch.Tensor], version: str) -> dict[str, torch.Tensor]:
    """Undo rwkv.cpp's conversion of an RWKV-`version` state dict (BlinkDL names and shapes out)."""
    if version == "4":
        return v4_from_rwkvcpp(raw)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        try:
            _undo_one(key, tensor, version, out)
        except (RuntimeError, IndexError, ValueError) as exc:  # a shape the layout cannot hold
            raise RwkvExportError(
                f"'{key}' has shape {list(tensor.shape)}, which rwkv.cpp's RWKV-{version} layout cannot hold ({first_line(exc, 120)})"
            ) from None
    return out


def _undo_one(key: str, tensor: torch.Tensor, version: str, out: dict[str, torch.Tensor]) -> None:
    name = key.rsplit(".", 1)[-1]
    if version in ("5.1", "5.2") and name == "time_decay":
        stored = tensor.double()  # exp(-exp(d)) in (0, 1)
        if not bool(((stored > 0) & (stored < 1)).all()):
            raise RwkvExportError(f"'{key}' should hold exp(-exp(time_decay)) (in (0, 1)) in an rwkv.cpp RWKV-{version} file")
        tensor = torch.log(-torch.log(stored)).to(tensor.dtype)
    elif version in ("5.1", "5.2") and name == "time_first":
        if not bool((tensor.double() > 0).all()):
            raise RwkvExportError(f"'{key}' should hold exp(time_first) (all positive) in an rwkv.cpp RWKV-{version} file")
        tensor = torch.log(tensor.double()).to(tensor.dtype)  # stored as exp(u)
    if version in ("5.1", "5.2") and name in ("time_decay", "time_first", "time_faaaa"):
        tensor = tensor.reshape(tensor.shape[0]) if version == "5.1" else tensor.reshape(tensor.shape[0], -1)
    elif version == "6" and name in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
        tensor = _matrix(tensor).t()
    elif version == "6" and name == "time_maa_w2":
        tensor = tensor.transpose(1, 2)  # (5, C, D) -> (5, D, C)
    elif version == "6" and name == "time_decay":
        tensor = tensor.reshape(1, 1, -1)
    elif version == "6" and name == "time_faaaa":
        tensor = tensor.reshape(tensor.shape[0], -1)
    elif version == "7" and name == "x_rwkvag":
        if tensor.shape[0] != 6 or tensor.dim() > 3 or tensor[0].numel() != tensor.shape[-1]:
            raise ValueError("expected 6 rows, one per mix r, w, k, v, a, g")
        for i, m in enumerate("rwkvag"):
            out[key[: -len(name)] + f"x_{m}"] = tensor[i].reshape(1, 1, -1).contiguous()
        return
    elif version == "7" and re.fullmatch(r"[wavg][12]", name):
        tensor = _matrix(tensor).t()
    elif name.startswith(("time_mix_", "time_maa_")):
        tensor = tensor.reshape(1, 1, -1)
    out[key] = tensor.contiguous()


def _matrix(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() != 2:
        raise ValueError(f"expected a matrix, found {tensor.dim()} dimensions")
    return tensor


def to_rwkvcpp(weights: dict[str, torch.Tensor], version: str) -> dict[str, torch.Tensor]:
    """Apply rwkv.cpp's conversion to a BlinkDL state dict (float64 out; the inverse of from_rwkvcpp)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        t = tensor.detach().to(torch.float64)
        name = key.rsplit(".", 1)[-1]
        if version == "4" and name == "time_decay":
            t = -torch.exp(t)
        elif version in ("5.1", "5.2") and name == "time_decay":
            t = torch.exp(-torch.exp(t))
        elif version in ("5.1", "5.2") and name == "time_first":
            t = torch.exp(t)
        if version == "7" and re.fullmatch(r"x_[rwkvag]", name) and ".att." in key:
            if name == "x_r":
                prefix = key[: -len(name)]
                out[prefix + "x_rwkvag"] = torch.stack([weights[prefix + f"x_{m}"].double().reshape(1, -1) for m in "rwkvag"])
            continue
        if version == "7" and re.fullmatch(r"[wavg][12]", name):
            t = t.t()
        elif version == "6" and name in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
            t = t.t()
        elif version == "6" and name == "time_maa_w2":
            t = t.transpose(1, 2)
        elif ".time_" in key:
            t = t.squeeze() if t.numel() > 1 else t.reshape(1)
            if version in ("5.1", "5.2", "6") and name in ("time_decay", "time_first", "time_faaaa"):
                n_head = weights[key.rsplit(".", 1)[0] + ".time_faaaa" if version == "6" else key].shape[0]
                t = t.reshape(n_head, -1, 1) if version != "5.1" else t.reshape(-1, 1, 1)
        out[key] = t.contiguous()
    return out


def v4_from_rwkvcpp(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo rwkv.cpp's RWKV-4 conversion: time_decay = log(-stored), time_mix_* back to [1, 1, C]."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        if key.endswith("att.time_decay"):
            stored = tensor.double()
            if not bool((stored < 0).all()):
                raise RwkvExportError(f"'{key}' should hold -exp(time_decay) (all negative) in an rwkv.cpp RWKV-4 file")
            tensor = torch.log(-stored).to(tensor.dtype)
        elif ".time_mix_" in key:
            tensor = tensor.reshape(1, 1, -1)
        out[key] = tensor
    return out


def write_rwkvcpp(path: Path, weights: dict[str, torch.Tensor], version: str, n_layer: int, fp16: bool = False) -> None:
    """Write a BlinkDL state dict of any version as an rwkv.cpp file, format version 101."""
    vocab, n_embd = weights["emb.weight"].shape
    chunks = [_HEADER.pack(MAGIC, 101, vocab, n_embd, n_layer, 1 if fp16 else 0)]
    for key, t in to_rwkvcpp(weights, version).items():
        # rwkv.cpp keeps vectors, `.time_*` tensors and r_k in FP32 even in FP16 files.
        name = key.rsplit(".", 1)[-1]
        half = fp16 and t.dim() == 2 and ".time_" not in key and (name == "weight" or bool(re.fullmatch(r"[wavg][12]", name)))
        array = t.numpy().astype(np.float16 if half else np.float32)
        dims = tuple(reversed(array.shape))
        encoded = key.encode("utf-8")
        chunks.append(struct.pack(f"<3i{len(dims)}i", len(dims), len(encoded), 1 if half else 0, *dims))
        chunks.append(encoded)
        chunks.append(np.ascontiguousarray(array).tobytes())
    atomic_write_bytes(path, b"".join(chunks))
