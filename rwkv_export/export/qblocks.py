"""The quantized tensors of one weight, made a slab at a time (so a streamed export never holds the
float matrix, and never the whole quantized one either).

A `QuantizedWeight` says how one float initializer becomes its quantized tensors: the graph op that
reads them (`matmulnbits`: ONNX Runtime's `com.microsoft::MatMulNBits`; `dq`: a blocked standard
`DequantizeLinear`; `gather`: `com.microsoft::GatherBlockQuantized`), the bits, the block size, and
the tensors it writes (`outputs`). `quantize(slab)` turns a slab of the float matrix, in the layout
the graph reads it (`[K, N]` for a MatMul's B, `[V, C]` for a gathered table), into each output's
part; the parts of consecutive slabs concatenate (as bytes) into the whole tensor, because every
block lies inside one slab:

- `matmulnbits` takes slabs of *columns* (`[K, n]`): its B is stored N-major (`[N, K/bs, bs*bits/8]`),
  so a slab of columns is a run of whole rows of each output. Quantized by ONNX Runtime's own kernels
  (`quantize_matmul_4bits` / `_8bits`, what its `MatMulNBitsQuantizer` calls).
- `dq` and `gather` take slabs of *rows* (`[k, N]`), `k` a multiple of `granularity` (the block size
  along K for `dq`; 2 for 4-bit packing, so a slab never ends in half a byte). int4 `dq` uses ONNX
  Runtime's `quantize_qdq_matmul_4bits`; the int4 table its quantizer's numpy routine; int8 blocks
  for `dq` and `gather` (which ONNX Runtime's tool does not make) follow its rounding rules here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto


@dataclass(frozen=True)
class Output:
    """One tensor a quantized weight is stored as."""

    name: str
    dims: tuple[int, ...]
    data_type: int  # onnx.TensorProto.*

    @property
    def nbytes(self) -> int:
        n = math.prod(self.dims)
        return (n + 1) // 2 if self.data_type in (TensorProto.INT4, TensorProto.UINT4) else n * _itemsize(self.data_type)


def _itemsize(data_type: int) -> int:
    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)


@dataclass(frozen=True)
class QuantizedWeight:
    """How the float initializer `source` ([K, N] or a [V, C] table, as the graph reads it) is stored."""

    source: str
    op: str  # matmulnbits | dq | gather
    bits: int  # 4 | 8
    block_size: int
    symmetric: bool
    shape: tuple[int, int]  # the float matrix as the graph reads it
    float_type: int  # its onnx data type (the scales')

    @property
    def columns(self) -> bool:
        """True: slabs of columns ([K, n]); False: slabs of rows ([k, N])."""
        return self.op == "matmulnbits"

    @property
    def granularity(self) -> int:
        """Slabs of rows hold a multiple of this many rows (all but the last)."""
        if self.op == "dq":
            return self.block_size * (2 if self.bits == 4 else 1)
        return 2 if self.bits == 4 else 1

    @property
    def prefix(self) -> str:
        return f"{self.source}_Q{self.bits}" if self.op != "dq" else f"{self.source}_DQ_Q{self.bits}"

    @property
    def outputs(self) -> tuple[Output, ...]:
        """The stored tensors: data, scales, then zero points (none for a symmetric MatMul or dq weight)."""
        rows, cols = self.shape
        bs, bits, ft = self.block_size, self.bits, self.float_type
        if self.op == "matmulnbits":
            blocks = rows // bs
            zero = Output(f"{self.source}_zero_points", (cols, (blocks * bits + 7) // 8), TensorProto.UINT8)
            data = Output(self.prefix, (cols, blocks, bs * bits // 8), TensorProto.UINT8)
            return (data, Output(f"{self.source}_scales", (cols, blocks), ft), *(() if self.symmetric else (zero,)))
        if self.op == "dq":
            qtype = _qtype(bits, self.symmetric)
            scales = (rows // bs, cols)
            zero = Output(f"{self.source}_DQ_zero_points", scales, qtype)
            return (
                Output(self.prefix, self.shape, qtype),
                Output(f"{self.source}_DQ_scales", scales, ft),
                *(() if self.symmetric else (zero,)),
            )
        scales = (rows, cols // bs)  # gather: blocks along C; always with zero points (uint8 data needs them)
        qtype = _qtype(bits, False)
        return (
            Output(self.prefix, self.shape, qtype),
            Output(f"{self.source}_scales", scales, ft),
            Output(f"{self.source}_zero_points", scales, qtype),
        )

    @property
    def nbytes(self) -> int:
        return sum(o.nbytes for o in self.outputs)

    def quantize(self, slab: np.ndarray) -> list[np.ndarray]:
        """Each output's part (a C-ordered array whose bytes are that part) for one slab."""
        if self.op == "matmulnbits":
            return _matmulnbits(np.ascontiguousarray(slab), self.bits, self.block_size, self.symmetric)
        if self.op == "dq":
            if self.bits == 4:
                return _qdq_int4(np.ascontiguousarray(slab), self.block_size, self.symmetric)
            q, scale, zero = block_quantize_int8(slab, self.block_size, self.symmetric)
            return [q, scale, *([] if zero is None else [zero])]
        if self.bits == 4:
            return _table_int4(slab, self.block_size)
        q, scale, zero = block_quantize_int8(slab.T, self.block_size, symmetric=False)
        assert zero is not None
        return [np.ascontiguousarray(a.T) for a in (q, scale, zero)]

    def node(self, matmul: onnx.NodeProto, accuracy_level: int) -> list[onnx.NodeProto]:
        """The nodes that replace `matmul` (a MatMul reading `source` as B, or the table's Gather)."""
        names = [o.name for o in self.outputs]
        if self.op == "gather":
            attrs: dict[str, Any] = {"bits": 8} if self.bits == 8 else {}
            return [
                onnx.helper.make_node(
                    "GatherBlockQuantized", [names[0], matmul.input[1], *names[1:]], list(matmul.output),
                    name=f"{matmul.name}_Q{self.bits}", domain=MS_DOMAIN, gather_axis=0, quantize_axis=1, block_size=self.block_size, **attrs,
                )
            ]  # fmt: skip
        if self.op == "matmulnbits":
            k, n = self.shape
            level: dict[str, Any] = {"accuracy_level": accuracy_level} if accuracy_level else {}
            return [
                onnx.helper.make_node(
                    "MatMulNBits", [matmul.input[0], *names], list(matmul.output), name=f"{matmul.name}_Q{self.bits}",
                    domain=MS_DOMAIN, K=k, N=n, bits=self.bits, block_size=self.block_size, **level,
                )
            ]  # fmt: skip
        dq = onnx.helper.make_node(
            "DequantizeLinear", names, [self.prefix + "_output"], name=f"{matmul.name}_DQ_Q{self.bits}", axis=0, block_size=self.block_size
        )
        mm = onnx.helper.make_node(
            "MatMul", [matmul.input[0], self.prefix + "_output"], list(matmul.output), name=f"{matmul.name}_matmul_Q{self.bits}"
        )
        return [dq, mm]


MS_DOMAIN = "com.microsoft"  # MatMulNBits' and GatherBlockQuantized's domain


def _qtype(bits: int, symmetric: bool) -> int:
    if bits == 8:
        return TensorProto.INT8 if symmetric else TensorProto.UINT8
    return TensorProto.INT4 if symmetric else TensorProto.UINT4


def _matmulnbits(slab: np.ndarray, bits: int, block_size: int, symmetric: bool) -> list[np.ndarray]:
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    k, n = slab.shape
    blocks = k // block_size
    packed = np.zeros((n, blocks, block_size * bits // 8), dtype=np.uint8)
    zero = np.zeros((n, (blocks * bits + 7) // 8), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=slab.dtype)
    kernel = quantize_matmul_8bits if bits == 8 else quantize_matmul_4bits
    kernel(packed, slab, scales, zero, block_size, n, k, symmetric)
    return [packed, scales, *([] if symmetric else [zero])]


def _qdq_int4(slab: np.ndarray, block_size: int, symmetric: bool) -> list[np.ndarray]:
    from onnxruntime.capi._pybind_state import quantize_qdq_matmul_4bits

    k, n = slab.shape
    packed = np.zeros((k * n + 1) // 2, dtype=np.uint8)
    zero = np.zeros((n * (k // block_size) + 1) // 2, dtype=np.uint8)
    scales = np.zeros((k // block_size, n), dtype=slab.dtype)
    quantize_qdq_matmul_4bits(packed, slab, scales, zero, block_size, n, k, symmetric)
    return [packed, scales, *([] if symmetric else [zero])]


def _table_int4(slab: np.ndarray, block_size: int) -> list[np.ndarray]:
    """ONNX Runtime's quantizer's own numpy routine for a Gather's table (blocks along axis 1, asymmetric)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantizer

    root.handlers[:], root.level = handlers, level  # the module calls logging.basicConfig(level=INFO) on import
    packed, scales, zero = DefaultWeightOnlyQuantizer.quantize_ndarray(slab, 1, block_size, False)
    assert zero is not None
    return [packed, scales, zero]


def block_quantize_int8(weight: np.ndarray, block_size: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """[K, N] float -> (q [K, N] int8|uint8, scales [K/bs, N], zero points [K/bs, N] uint8 or None),
    blocks along K; ORT's rounding rules (symmetric: scale = absmax/127; asymmetric: range incl. 0 / 255)."""
    k, n = weight.shape
    blocks = weight.astype(np.float32).reshape(k // block_size, block_size, n)
    if symmetric:
        scale = np.abs(blocks).max(axis=1) / 127.0
        q = np.clip(np.rint(blocks / np.where(scale == 0, 1, scale)[:, None, :]), -127, 127).astype(np.int8)
        return q.reshape(k, n), scale.astype(weight.dtype), None
    lo, hi = np.minimum(blocks.min(axis=1), 0), np.maximum(blocks.max(axis=1), 0)
    scale = (hi - lo) / 255.0
    safe = np.where(scale == 0, 1, scale)
    zero = np.clip(np.rint(-lo / safe), 0, 255)
    q = np.clip(np.rint(blocks / safe[:, None, :] + zero[:, None, :]), 0, 255).astype(np.uint8)
    return q.reshape(k, n), scale.astype(weight.dtype), zero.astype(np.uint8)


def describe(tensor: onnx.TensorProto, output: Output, location: tuple[str, int] | bytes) -> None:
    """Give a placeholder initializer its output's type and dims and its data (inline bytes, or a place in a file)."""
    tensor.dims[:] = output.dims
    tensor.data_type = output.data_type
    set_location(tensor, location, output.nbytes)


def set_location(tensor: onnx.TensorProto, location: tuple[str, int] | bytes, nbytes: int) -> None:
    """Inline bytes, or (file name, offset) of `nbytes` bytes as ONNX external data."""
    if isinstance(location, bytes):
        tensor.raw_data = location
        return
    name, offset = location
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for k, v in (("location", name), ("offset", str(offset)), ("length", str(nbytes))):
        tensor.external_data.add(key=k, value=v)
