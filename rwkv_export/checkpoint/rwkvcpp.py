"""rwkv.cpp model files (`ggmf` magic, format versions 100 and 101, FP32 / FP16 tensors).

Layout (little-endian): header of six int32 (magic 0x67676d66, version, n_vocab, n_embed, n_layer,
data type), then records to the end of the file: int32 n_dims, int32 key length, int32 dtype
(0 FP32, 1 FP16), n_dims int32 dims in reversed PyTorch order, the UTF-8 key, the raw data.
rwkv.cpp's converter squeezes `.time_*` tensors and stores RWKV-4's time_decay as -exp(d); reading
undoes that (BlinkDL form out), writing applies it (so files round-trip through rwkv.cpp's tools).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from rwkv_export.errors import RwkvExportError
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
        raw[key] = tensor
    return raw, header


def _read_record(data: bytes, offset: int, path: Path) -> tuple[int, str, torch.Tensor]:
    if offset + 12 > len(data):
        raise RwkvExportError(f"{path}: truncated rwkv.cpp file (record header at byte {offset})")
    n_dims, key_len, dtype_code = struct.unpack_from("<3i", data, offset)
    offset += 12
    if not 1 <= n_dims <= 3 or key_len <= 0 or key_len > 1024:
        raise RwkvExportError(f"{path}: corrupt rwkv.cpp record at byte {offset - 12} (n_dims={n_dims}, key length={key_len})")
    dims = struct.unpack_from(f"<{n_dims}i", data, offset)
    offset += 4 * n_dims
    key = data[offset : offset + key_len].decode("utf-8", errors="replace")
    offset += key_len
    if dtype_code in _QUANTIZED:
        raise RwkvExportError(f"{path}: '{key}' is quantized ({_QUANTIZED[dtype_code]}); only FP32 and FP16 rwkv.cpp files load")
    if dtype_code not in _DTYPES:
        raise RwkvExportError(f"{path}: '{key}' has unknown rwkv.cpp data type {dtype_code}")
    np_dtype = _DTYPES[dtype_code]
    count = int(np.prod(dims))
    nbytes = count * np.dtype(np_dtype).itemsize
    if offset + nbytes > len(data):
        raise RwkvExportError(f"{path}: truncated rwkv.cpp file ('{key}' needs {nbytes} bytes at byte {offset})")
    array = np.frombuffer(data, np_dtype, count, offset).reshape(tuple(reversed(dims)))
    return offset + nbytes, key, torch.from_numpy(array.copy())


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


def write_rwkvcpp_v4(path: Path, weights: dict[str, torch.Tensor], n_layer: int, fp16: bool = False) -> None:
    """Write an RWKV-4 state dict (BlinkDL form) as an rwkv.cpp file, version 101."""
    vocab, n_embd = weights["emb.weight"].shape
    chunks = [_HEADER.pack(MAGIC, 101, vocab, n_embd, n_layer, 1 if fp16 else 0)]
    for key, tensor in weights.items():
        t = tensor.detach().to(torch.float64)
        if key.endswith("att.time_decay"):
            t = -torch.exp(t)
        if ".time_" in key:
            t = t.reshape(-1)
        # rwkv.cpp keeps 1-D tensors (norms, time_*) in FP32 even in FP16 files.
        half = fp16 and t.dim() == 2
        array = t.numpy().astype(np.float16 if half else np.float32)
        dims = tuple(reversed(array.shape))
        encoded = key.encode("utf-8")
        chunks.append(struct.pack(f"<3i{len(dims)}i", len(dims), len(encoded), 1 if half else 0, *dims))
        chunks.append(encoded)
        chunks.append(np.ascontiguousarray(array).tobytes())
    atomic_write_bytes(path, b"".join(chunks))
