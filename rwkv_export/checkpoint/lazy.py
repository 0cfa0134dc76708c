"""Checkpoints read tensor by tensor: the export of a 14 GB model never holds more than one tensor of it.

`TensorStore` is a read-only Mapping of key -> tensor whose `[key]` reads that tensor from disk (a new
tensor each time, nothing cached); its `shapes`, `dtypes` and `meta()` answer from the file's header
alone, so `info` and config inference are instant on any size. Readers:

    .safetensors                 header parsed here; each tensor read with pread at its offset
    model.safetensors.index.json transformers' sharded layout: the index's weight_map names each key's shard
    .pth / .pt                   torch.load(mmap=True, weights_only=True); each tensor copied out of the map,
                                 then its pages dropped from the process (madvise), so RSS stays one tensor

A header that points past its file's end, a shard the index names but the directory lacks, and a
file that ends before a tensor does are each one RwkvExportError line naming the file.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from rwkv_export.checkpoint import validate
from rwkv_export.errors import RwkvExportError, first_line

SHARD_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class _Entry:
    """Where one tensor's bytes lie: file, absolute offset, length, dtype and shape."""

    file: Path
    offset: int
    length: int
    dtype: torch.dtype
    shape: tuple[int, ...]


class TensorStore(Mapping[str, torch.Tensor]):
    """key -> tensor, read from disk on every access (see the module docstring)."""

    def __init__(
        self, entries: Mapping[str, _Entry] | None = None, mapped: Mapping[str, torch.Tensor] | None = None, where: str | None = None
    ) -> None:
        self._entries = dict(entries or {})
        self._mapped = dict(mapped or {})  # .pth: tensors backed by torch's read-only file map
        self._where = where  # set: every read refuses NaN / Inf, naming this file

    def __getitem__(self, key: str) -> torch.Tensor:
        tensor = _copy_out(self._mapped[key]) if key in self._mapped else _read_entry(self._entries[key])
        if self._where is not None:
            validate.check_finite({key: tensor}, self._where)
        return tensor

    def rows(self, key: str, start: int, stop: int, check: bool = True) -> torch.Tensor:
        """Rows start:stop of a tensor (its first axis), read alone (check False: no NaN / Inf check,
        for a caller reading the same rows again)."""
        if key in self._mapped:
            tensor = _copy_out(self._mapped[key][start:stop])
        else:
            entry = self._entries[key]
            row = entry.length // max(1, entry.shape[0])
            part = _Entry(entry.file, entry.offset + start * row, (stop - start) * row, entry.dtype, (stop - start, *entry.shape[1:]))
            tensor = _read_entry(part)
        if check and self._where is not None:
            validate.check_finite({key: tensor}, f"{self._where} (rows {start}:{stop})")
        return tensor

    def checked(self, where: str) -> TensorStore:
        """The same store, refusing NaN / Inf in every tensor it reads (the error names `where`)."""
        return TensorStore(self._entries, self._mapped, where)

    def __iter__(self) -> Iterator[str]:
        yield from self._entries
        yield from self._mapped

    def __len__(self) -> int:
        return len(self._entries) + len(self._mapped)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key].shape if key in self._entries else tuple(self._mapped[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._entries[key].dtype if key in self._entries else self._mapped[key].dtype

    def meta(self) -> dict[str, torch.Tensor]:
        """Every tensor as a meta tensor (shape and dtype, no data): for config inference and checks."""
        return {k: torch.empty(self.shape(k), dtype=self.dtype(k), device="meta") for k in self}


def open_tensor_file(path: Path) -> TensorStore:
    """A TensorStore over a .safetensors file, a sharded index, or a .pth/.pt archive."""
    if path.name.endswith(".index.json"):
        return _open_shards(path)
    size = validate.regular_file(path, "checkpoint")
    if path.suffix == ".safetensors":
        return TensorStore(_safetensors_entries(path, size))
    return _open_pth(path, size)


def safetensors_header_length(path: Path, size: int) -> int:
    """The JSON header's length a safetensors file declares, refused unless it fits the file."""
    with open(path, "rb") as f:
        head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < n <= min(size - 8, MAX_HEADER_BYTES):
        raise RwkvExportError(f"{path}: not a readable safetensors file (header length {n} does not fit its {size} bytes)")
    return n


def _safetensors_header(path: Path, size: int) -> tuple[int, dict[str, object]]:
    """(start of the data, the JSON header) of a safetensors file."""
    n = safetensors_header_length(path, size)
    with open(path, "rb") as f:
        f.seek(8)
        text = f.read(n)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RwkvExportError(f"{path}: not a readable safetensors file (header is not JSON: {first_line(exc)})") from None
    if not isinstance(header, dict):
        raise RwkvExportError(f"{path}: not a readable safetensors file (header is not a JSON object)")
    return 8 + n, header


def _safetensors_entries(path: Path, size: int, whole: bool = True) -> dict[str, _Entry]:
    """The tensors of one file (whole: it is the checkpoint, so its keys must name every block)."""
    start, header = _safetensors_header(path, size)
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        where = f"{path}: tensor '{str(key)[:80]}'"
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list) or not isinstance(info.get("data_offsets"), list):
            raise RwkvExportError(f"{where} has no shape/data_offsets in the header")
        dtype = SAFETENSORS_DTYPES.get(str(info.get("dtype")))
        if dtype is None:
            raise RwkvExportError(f"{where} has dtype {info.get('dtype')!r}, expected one of {', '.join(SAFETENSORS_DTYPES)}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not all(isinstance(d, int) and d >= 0 for d in shape) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets):
            raise RwkvExportError(f"{where} has a malformed shape or data_offsets in the header")
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
        if not 0 <= begin <= end or end - begin != numel * dtype.itemsize:
            raise RwkvExportError(f"{where}: data_offsets {offsets} do not hold {shape} x {info['dtype']}")
        if start + end > size:
            raise RwkvExportError(f"{where} ends at byte {start + end:,} but the file has {size:,} bytes (truncated?)")
        entries[key] = _Entry(path, start + begin, end - begin, dtype, tuple(shape))
    if whole:
        validate.check_keys(list(entries), str(path))
    return entries


def _open_shards(index: Path) -> TensorStore:
    """transformers' sharded safetensors: the index's weight_map maps every key to a shard beside it."""
    data = validate.read_json_object(index)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise RwkvExportError(f"{index}: no 'weight_map' object in the shard index")
    entries: dict[str, _Entry] = {}
    for shard in sorted({str(v) for v in weight_map.values()}):
        path = index.parent / shard
        if Path(shard).name != shard or not path.exists():
            raise RwkvExportError(f"{index}: shard '{shard[:120]}' named by the index is missing")
        part = _safetensors_entries(path, validate.regular_file(path, "checkpoint shard"), whole=False)
        for key, entry in part.items():
            if weight_map.get(key) != shard:
                raise RwkvExportError(f"{path}: holds '{key}', which the index places in '{weight_map.get(key)}'")
            entries[key] = entry
    missing = sorted(set(weight_map) - set(entries))
    if missing:
        raise RwkvExportError(f"{index}: '{missing[0]}' is not in its shard '{weight_map[missing[0]]}' ({len(missing)} missing)")
    validate.check_keys(list(entries), str(index))
    return TensorStore(entries)


def _open_pth(path: Path, size: int) -> TensorStore:
    if not validate.is_zip(path):
        raise RwkvExportError(f"{path}: not a readable PyTorch checkpoint (not a zip archive; torch.save writes one since torch 1.6)")
    validate.check_zip_sizes(path, size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # the unpickler raises anything on garbage
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise RwkvExportError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RwkvExportError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    validate.check_keys(list(obj), str(path))
    return TensorStore(mapped=obj)


def _read_entry(entry: _Entry) -> torch.Tensor:
    buf = bytearray(entry.length)
    view, done = memoryview(buf), 0
    with open(entry.file, "rb", buffering=0) as f:
        while done < entry.length:
            n = os.preadv(f.fileno(), [view[done:]], entry.offset + done)
            if n <= 0:
                raise RwkvExportError(f"{entry.file}: the file ends inside a tensor (byte {entry.offset + done:,}; truncated?)")
            done += n
    if not buf:
        return torch.empty(entry.shape, dtype=entry.dtype)
    return torch.frombuffer(buf, dtype=entry.dtype).reshape(entry.shape)


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True)


def _copy_out(mapped: torch.Tensor) -> torch.Tensor:
    """A private copy of a file-mapped tensor; the mapped pages then leave this process's RSS
    (read-only private file pages: dropping them loses nothing, a later read faults them back in)."""
    try:
        out = mapped.clone()
    except RuntimeError as exc:  # SIGBUS surfaces as a crash, a short storage as this
        raise RwkvExportError(f"cannot read a tensor of the checkpoint ({first_line(exc)}; truncated?)") from None
    storage = mapped.untyped_storage()
    begin = storage.data_ptr() + mapped.storage_offset() * mapped.element_size()
    end = begin + mapped.numel() * mapped.element_size()
    lo, hi = begin - begin % _PAGE, -(-end // _PAGE) * _PAGE
    if hi > lo:
        _libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED)
    return out


def write_safetensors(
    path: Path, layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]], tensors: Iterable[tuple[str, torch.Tensor]], bar: bool = False
) -> None:
    """Write a .safetensors file one tensor at a time: the header from `layout` (key -> shape, dtype),
    then each tensor as `tensors` yields it (in layout order, each checked against it). Atomic."""
    from tqdm import tqdm

    from rwkv_export.fileio import atomic_output_path

    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, (shape, dtype) in layout.items():
        length = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + length]}
        offset += length
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    order = iter(layout.items())
    with atomic_output_path(path) as tmp, open(tmp, "wb") as f:
        with tqdm(total=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name, disable=not bar, leave=False) as progress:
            f.write(len(text).to_bytes(8, "little") + text)
            for key, tensor in tensors:
                expected_key, (shape, dtype) = next(order)
                if key != expected_key or tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                    raise AssertionError(
                        f"tensor {key} {list(tensor.shape)} {tensor.dtype} is not the header's {expected_key} {shape} {dtype}"
                    )
                f.write(memoryview(tensor.contiguous().view(torch.uint8).numpy()))
                progress.update(tensor.numel() * tensor.element_size())
