"""Write the graphs' weights one tensor at a time, straight from the checkpoint.

Each `WeightEntry` (assemble.py) is produced when it is written: its checkpoint tensor read (a
TensorStore reads it from disk now), prepared as the reference model prepares its buffer
(`RWKVModel.buffer`: dtype, float16 rescale, per-head expansion), its recipe folded in (a transpose,
cast or reshape), then written and dropped. Peak memory is one tensor's, whatever the model's size.

Two layouts:
- shared (`data_path` given): one file, `weights.data`, holds every tensor once; both graphs'
  initializers point into it (ONNX external data: location, offset, length). Tensors of 1 MiB or
  more start on a 64 KiB boundary so ONNX Runtime can map them from the file (64 KiB: the
  allocation granularity of Windows, a multiple of every Linux page size); the rest on 64 bytes.
  The file's sha256 is computed while it is written.
- inline (small models): every graph carries its own copy in the protobuf, as a self-contained file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from rwkv_export.errors import RwkvExportError
from rwkv_export.export.assemble import Recipe, WeightEntry
from rwkv_export.model import RWKVModel

WEIGHTS_FILE = "weights.data"
ALIGN = 64
PAGE_ALIGN = 1 << 16
PAGE_ALIGN_FROM = 1 << 20  # tensors at least this large start on a PAGE_ALIGN boundary


class WeightSource:
    """Produces each entry's array from the checkpoint's tensors and the model's buffer rules."""

    def __init__(self, model: RWKVModel, weights: Mapping[str, torch.Tensor], keys: list[dict[str, str]], top: dict[str, str]) -> None:
        self.model, self.weights, self.keys, self.top = model, weights, keys, top
        self._evaluators: dict[tuple[str, str], ReferenceEvaluator] = {}

    def key(self, entry: WeightEntry, buffer: str) -> str:
        return self.top[buffer] if entry.layer is None else self.keys[entry.layer][buffer]

    def estimate(self, entry: WeightEntry) -> int:
        """The entry's bytes as the (meta) model's buffer says (a recipe keeps the size)."""
        owner = self.model if entry.layer is None else self.model.blocks[entry.layer]
        buf = getattr(owner, entry.buffers[0])
        return int(buf.numel() * buf.element_size())

    def produce(self, entry: WeightEntry) -> np.ndarray:
        arrays = {}
        for buffer in entry.buffers:
            key = self.key(entry, buffer)
            tensor = self.model.buffer(key, self.weights[key], entry.layer)
            arrays[buffer] = tensor.numpy()
        recipe = entry.recipe
        if recipe.model is None:
            return arrays[recipe.inputs[0]]
        (value,) = self._evaluator(recipe).run(None, arrays)
        return np.asarray(value)

    def _evaluator(self, recipe: Recipe) -> ReferenceEvaluator:
        key = (recipe.piece, recipe.value)
        if key not in self._evaluators:
            self._evaluators[key] = ReferenceEvaluator(recipe.model)
        return self._evaluators[key]


def write_weights(
    entries: list[WeightEntry], source: WeightSource, graphs: list[onnx.ModelProto], data_path: Path | None, bar: bool = False
) -> str | None:
    """Fill every graph's initializer of each entry (shared file at data_path, or inline); the file's sha256."""
    from tqdm import tqdm

    targets: dict[str, list[onnx.TensorProto]] = {e.name: [] for e in entries}
    for model in graphs:
        for t in model.graph.initializer:
            if t.name in targets:
                targets[t.name].append(t)
    total = sum(source.estimate(e) for e in entries)
    digest = hashlib.sha256()
    opened: Any = open(data_path, "wb") if data_path is not None else nullcontext()
    with (
        opened as f,
        tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="weights", disable=not bar, leave=False) as progress,
    ):
        offset = 0
        for entry in entries:
            array = np.ascontiguousarray(source.produce(entry))
            if f is not None:
                offset = _append(f, array, offset, digest, data_path)
            for t in targets[entry.name]:
                _describe(t, array, None if f is None else (data_path.name, offset - array.nbytes))  # type: ignore[union-attr]
            progress.update(array.nbytes)
    return digest.hexdigest() if data_path is not None else None


def _append(f: IO[bytes], array: np.ndarray, offset: int, digest: Any, path: Path | None) -> int:
    """Pad to the tensor's alignment, write it; the offset after it."""
    align = PAGE_ALIGN if array.nbytes >= PAGE_ALIGN_FROM else ALIGN
    pad = -offset % align
    data = memoryview(array.reshape(-1).view(np.uint8))
    try:
        f.write(b"\0" * pad)
        f.write(data)
    except OSError as exc:  # ENOSPC, EIO: one line; the atomic directory removes the partial export
        raise RwkvExportError(f"cannot write {path}: {exc.strerror or exc} (at byte {offset + pad:,})") from None
    digest.update(b"\0" * pad)
    digest.update(data)
    return offset + pad + array.nbytes


def _describe(t: onnx.TensorProto, array: np.ndarray, location: tuple[str, int] | None) -> None:
    t.dims[:] = array.shape
    t.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    if location is None:
        t.raw_data = array.tobytes()
        return
    name, offset = location
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", name), ("offset", str(offset)), ("length", str(array.nbytes))):
        t.external_data.add(key=k, value=v)
