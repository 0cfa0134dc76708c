"""Write the graphs' weights one tensor at a time, straight from the checkpoint.

Each `WeightEntry` (assemble.py) is produced when it is written: its checkpoint tensor read (a
TensorStore reads it from disk now), prepared as the reference model prepares its buffer
(`RWKVModel.buffer`: dtype, float16 rescale, per-head expansion), its recipe folded in (a transpose,
cast or reshape), then written and dropped. Peak memory is one tensor's, whatever the model's size. A quantized entry (a
`QuantizedWeight` from quantize.py) is read in slabs (`WeightSource.slabs`) and written as its
quantized tensors: the data streamed slab by slab, its scales and zero points after it.

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
import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator

from rwkv_export.checkpoint import Checkpoint, TensorStore
from rwkv_export.errors import RwkvExportError
from rwkv_export.export.assemble import Recipe, WeightEntry
from rwkv_export.export.qblocks import QuantizedWeight, describe, set_location
from rwkv_export.model import RWKVModel

WEIGHTS_FILE = "weights.data"
ALIGN = 64
PAGE_ALIGN = 1 << 16
PAGE_ALIGN_FROM = 1 << 20  # tensors at least this large start on a PAGE_ALIGN boundary
CHUNK_BYTES = 16 << 20  # bytes (at 8 per element) of a block converted or copied at a time
BLOCKED_FROM = 64 << 20  # a matrix above this many bytes at 8 per element is converted block by block
COLUMN_BLOCK_BYTES = 64 << 20  # a transposed matrix's block of columns (at 8 bytes per element): one pass each


class WeightSource:
    """Produces each entry's array from the checkpoint's tensors and the model's buffer rules."""

    def __init__(self, model: RWKVModel, ckpt: Checkpoint, keys: list[dict[str, str]], top: dict[str, str]) -> None:
        self.model, self.ckpt, self.weights, self.keys, self.top = model, ckpt, ckpt.weights, keys, top
        self._evaluators: dict[tuple[str, str], ReferenceEvaluator] = {}
        self._shapes: dict[tuple[str, str], tuple[tuple[int, ...], int] | None] = {}

    def key(self, entry: WeightEntry, buffer: str) -> str:
        return self.top[buffer] if entry.layer is None else self.keys[entry.layer][buffer]

    def estimate(self, entry: WeightEntry) -> int:
        """The entry's bytes as the (meta) model's buffer says (a recipe keeps the size)."""
        owner = self.model if entry.layer is None else self.model.blocks[entry.layer]
        buf = getattr(owner, entry.buffers[0])
        return int(buf.numel() * buf.element_size())

    def shape(self, entry: WeightEntry) -> tuple[tuple[int, ...], int] | None:
        """The entry's (dims, onnx data type) as the graph reads it (after its recipe), from the meta
        model and shape inference on the recipe; None when inference cannot tell."""
        owner = self.model if entry.layer is None else self.model.blocks[entry.layer]
        buf = getattr(owner, entry.buffers[0])
        recipe = entry.recipe
        if recipe.model is None:
            return tuple(buf.shape), onnx.helper.np_dtype_to_tensor_dtype(np.dtype(str(buf.dtype).replace("torch.", "")))
        key = (recipe.piece, recipe.value)
        if key not in self._shapes:
            inferred = onnx.shape_inference.infer_shapes(recipe.model).graph
            known = {v.name: v.type.tensor_type for v in (*inferred.output, *inferred.value_info)}
            tensor = known.get(recipe.value)
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim) if tensor is not None else (-1,)
            self._shapes[key] = (dims, tensor.elem_type) if tensor is not None and min(dims, default=0) >= 0 else None
        return self._shapes[key]

    def slabs(self, entry: WeightEntry, plan: QuantizedWeight) -> Iterator[np.ndarray]:
        """The entry's matrix, as the graph reads it ([K, N]), in the slabs `plan` quantizes: blocks of
        columns ([K, n]; a transposed source is read a block of its rows at a time), or of rows (a
        multiple of `plan.granularity` each)."""
        if not plan.columns:
            yield from _regroup(self.blocks(entry)[2], plan.granularity)
            return
        key = self.key(entry, entry.buffers[0])
        recipe, (rows, cols) = entry.recipe, self.ckpt.shape(key)
        step = max(1, CHUNK_BYTES // (cols * 8))
        if len(entry.buffers) == 1 and recipe.blockwise and "transpose" in recipe.ops:
            for r in range(0, rows, step):  # rows r..stop of the source: columns r..stop of the graph's matrix
                stop = min(rows, r + step)
                prepared = self.model.buffer(key, self._rows(key, r, stop), entry.layer).numpy()
                (value,) = self._evaluator(recipe).run(None, {recipe.inputs[0]: prepared})
                yield np.ascontiguousarray(value)
            return
        whole = self.produce(entry)
        for c in range(0, whole.shape[1], step):
            yield np.ascontiguousarray(whole[:, c : c + step])

    def blocks(self, entry: WeightEntry) -> tuple[tuple[int, ...], np.dtype, Iterator[np.ndarray]]:
        """(shape, dtype, C-ordered row blocks) of the entry. A large matrix used as it is or transposed
        is converted a block at a time (its rows, or for a transpose blocks of its columns gathered by
        passes over its rows), so neither the source nor a converted copy is ever held whole."""
        key = self.key(entry, entry.buffers[0])
        shape = self.ckpt.shape(key)
        big = len(shape) == 2 and math.prod(shape) * 8 > BLOCKED_FROM
        if len(entry.buffers) == 1 and big and (entry.recipe.model is None or entry.recipe.blockwise):
            return self._blocked(entry, key, shape)
        array = self.produce(entry)
        return array.shape, array.dtype, _row_blocks(array)

    def produce(self, entry: WeightEntry) -> np.ndarray:
        """The entry's whole array (possibly a transposed view)."""
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

    def _blocked(self, entry: WeightEntry, key: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], np.dtype, Iterator[np.ndarray]]:
        """A matrix converted a block at a time: rows of the source, or (when the recipe transposes)
        blocks of its columns, each block run through the buffer rule and the recipe."""
        recipe, rows, cols = entry.recipe, shape[0], shape[1]
        transpose = "transpose" in recipe.ops

        def finish(block: torch.Tensor, expected: tuple[int, int]) -> np.ndarray:
            prepared = self.model.buffer(key, block, entry.layer)
            assert tuple(prepared.shape) == expected, f"{key}: its buffer rule is not elementwise"
            if recipe.model is None:
                return prepared.numpy()
            (value,) = self._evaluator(recipe).run(None, {recipe.inputs[0]: prepared.numpy()})
            return np.asarray(value)

        def by_rows() -> Iterator[np.ndarray]:
            step = max(1, CHUNK_BYTES // (cols * 8))
            for r in range(0, rows, step):
                stop = min(rows, r + step)
                yield finish(self._rows(key, r, stop), (stop - r, cols))

        def by_columns() -> Iterator[np.ndarray]:
            # Each block of columns is gathered from a pass over the source's rows (the page cache
            # serves the passes after the first; NaN / Inf are checked on the first), so memory is
            # one block, not the source.
            step = max(1, COLUMN_BLOCK_BYTES // (rows * 8))
            run = max(1, CHUNK_BYTES // (cols * 8))
            for c in range(0, cols, step):
                stop = min(cols, c + step)
                parts = [self._rows(key, r, min(rows, r + run), check=c == 0)[:, c:stop].clone() for r in range(0, rows, run)]
                yield from _row_blocks(finish(torch.cat(parts), (rows, stop - c)))

        blocks = by_columns() if transpose else by_rows()
        first = next(blocks)  # its dtype is the tensor's
        return ((cols, rows) if transpose else shape), first.dtype, itertools.chain([first], blocks)

    def _rows(self, key: str, start: int, stop: int, check: bool = True) -> torch.Tensor:
        weights = self.weights
        return weights.rows(key, start, stop, check) if isinstance(weights, TensorStore) else weights[key][start:stop]

    def _evaluator(self, recipe: Recipe) -> ReferenceEvaluator:
        key = (recipe.piece, recipe.value)
        if key not in self._evaluators:
            self._evaluators[key] = ReferenceEvaluator(recipe.model)
        return self._evaluators[key]


def write_weights(
    entries: list[WeightEntry],
    source: WeightSource,
    graphs: list[onnx.ModelProto],
    data_path: Path | None,
    bar: bool = False,
    plans: dict[str, QuantizedWeight] | None = None,
) -> str | None:
    """Fill every graph's initializer of each entry (shared file at data_path, or inline); the file's
    sha256. An entry with a plan (quantize.py) is written as its quantized tensors, slab by slab."""
    from tqdm import tqdm

    plans = plans or {}
    names = [o.name for e in entries for o in (plans[e.name].outputs if e.name in plans else [e])]
    targets: dict[str, list[onnx.TensorProto]] = {name: [] for name in names}
    for model in graphs:
        for t in model.graph.initializer:
            if t.name in targets:
                targets[t.name].append(t)
    total = sum(source.estimate(e) for e in entries)
    writer = _Writer(data_path) if data_path is not None else None

    def place(blocks: Iterable[np.ndarray], nbytes: int) -> tuple[str, int] | bytes:
        if writer is not None:
            return writer.path.name, writer.append(blocks, nbytes)
        return b"".join(np.ascontiguousarray(block).tobytes() for block in blocks)

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="weights", disable=not bar, leave=False) as progress:
        try:
            for entry in entries:
                plan = plans.get(entry.name)
                if plan is None:
                    shape, dtype, blocks = source.blocks(entry)
                    nbytes = math.prod(shape) * dtype.itemsize
                    location = place(blocks, nbytes)
                    for t in targets[entry.name]:
                        t.dims[:], t.data_type = shape, onnx.helper.np_dtype_to_tensor_dtype(dtype)
                        set_location(t, location, nbytes)
                else:
                    _write_quantized(entry, plan, source, place, targets)
                progress.update(source.estimate(entry))
        except BaseException:
            if writer is not None:
                writer.close(check=False)
            raise
    return writer.close() if writer is not None else None


def _write_quantized(
    entry: WeightEntry,
    plan: QuantizedWeight,
    source: WeightSource,
    place: Callable[[Iterable[np.ndarray], int], tuple[str, int] | bytes],
    targets: dict[str, list[onnx.TensorProto]],
) -> None:
    """The plan's first tensor (the quantized data) streamed slab by slab; its scales and zero points,
    a small fraction of it, gathered meanwhile and written after it."""
    rest: list[list[np.ndarray]] = [[] for _ in plan.outputs[1:]]

    def data() -> Iterator[np.ndarray]:
        for slab in source.slabs(entry, plan):
            first, *others = plan.quantize(slab)
            for parts, part in zip(rest, others, strict=True):
                parts.append(part)
            yield first

    for output, blocks in zip(plan.outputs, [data(), *rest], strict=True):
        location = place(blocks, output.nbytes)
        for t in targets[output.name]:
            describe(t, output, location)


class _Writer:
    """Appends tensors to the shared file; a thread writes and hashes while the caller converts the
    next block (both release the GIL: on 2 cores, I/O and sha256 overlap the conversions). At most
    QUEUE blocks wait, so memory stays a few blocks."""

    QUEUE = 4

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.file = open(path, "wb")
        self.digest = hashlib.sha256()
        self.queue: queue.Queue[bytes | memoryview | None] = queue.Queue(self.QUEUE)
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="weights-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.file.write(data)
                    self.digest.update(data)
                except OSError as exc:  # ENOSPC, EIO: reported by the caller's next append or close
                    self.error = exc

    def _put(self, data: bytes | memoryview) -> None:
        if self.error is not None:
            self._raise()
        self.queue.put(data)

    def _raise(self) -> None:
        exc = self.error
        assert exc is not None
        raise RwkvExportError(f"cannot write {self.path}: {exc.strerror or exc} (near byte {self.offset:,})") from None

    def append(self, blocks: Iterable[np.ndarray], nbytes: int) -> int:
        """Pad to the tensor's alignment and queue its blocks; the tensor's offset."""
        align = PAGE_ALIGN if nbytes >= PAGE_ALIGN_FROM else ALIGN
        pad = -self.offset % align
        if pad:
            self._put(b"\0" * pad)
        start, written = self.offset + pad, 0
        for block in blocks:
            data = memoryview(np.ascontiguousarray(block).reshape(-1).view(np.uint8))
            self._put(data)
            written += len(data)
        assert written == nbytes, f"wrote {written} bytes of a {nbytes}-byte tensor"
        self.offset = start + nbytes
        return start

    def close(self, check: bool = True) -> str:
        """Wait for the queued writes; the file's sha256 (check: a write's error raised as RwkvExportError)."""
        self.queue.put(None)
        self.thread.join()
        self.file.close()
        if check and self.error is not None:
            self._raise()
        return self.digest.hexdigest()


def _regroup(blocks: Iterable[np.ndarray], multiple: int) -> Iterator[np.ndarray]:
    """Row blocks re-cut so each but the last holds a multiple of `multiple` rows."""
    pending: list[np.ndarray] = []
    count = 0
    for block in blocks:
        pending.append(block)
        count += len(block)
        if count >= multiple:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            cut = count - count % multiple
            yield joined[:cut]
            pending, count = ([joined[cut:]], count - cut) if cut < count else ([], 0)
    if count:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def _row_blocks(array: np.ndarray) -> Iterator[np.ndarray]:
    """A whole array as C-ordered blocks of rows (a transposed view is copied a block at a time)."""
    rows = array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(1, -1)
    step = max(1, CHUNK_BYTES // max(1, rows[:1].nbytes))
    for r in range(0, len(rows), step):
        block = rows[r : r + step]
        if not block.flags.c_contiguous:  # torch's blocked copy: 2-4x numpy's on a transposed float16 view
            block = torch.from_numpy(block).contiguous().numpy()
        yield block
