"""Run the WKV kernels on a GPU through the CUDA driver API (cuda-python), for every op of the registry.

Three levels, each taking the op's name (its registry entry says which .cu unit, launch forms, entry
names, sizes and IO inputs it has):
  - pure (CPU-testable): `plan_launch(op, launch, io, sizes)` picks the kernel entry and its
    grid/block for a launch form ("auto" or one of the op's: WKV4 seq / seq4 / chunked / step,
    WKV5/6/7 head); `pack_args` lays pointers and int32 scalars out as the `void**` array
    cuLaunchKernel reads; `device_pointer` gets a device address from torch / CUDA-array / DLPack.
  - raw: `launch_raw(op, inputs, outputs, sizes, io=, launch=, stream=)`: device addresses in the
    op's order; what a TensorRT plugin's enqueue calls. Nothing allocated, nothing synchronised.
  - torch: `launch_tensors(op, *tensors)` -> the op's outputs as new CUDA tensors.

Only the raw and torch levels import cuda.bindings.driver (plugins/cuda_driver.py), when first called.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rwkv_export.errors import RwkvExportError
from rwkv_export.kernels import cuda_driver
from rwkv_export.ops.registry import IO_DTYPES, OpSpec, op_spec

THREADS_PER_BLOCK = 128  # 1-D launches: 4 warps, small enough for many resident blocks per SM
MAX_BLOCK = 1024  # chunked: cw * nch threads; the kernel has __launch_bounds__(1024)
MIN_CHUNK = 16  # tokens per chunk: shorter chunks spend more on the scan than they save
MAX_CHUNKS = 128  # with cw >= 8 channels per block (32-byte sectors of f32 loads)
MIN_CW = 8  # narrowest chunked block: 8 f32 channels fill one 32-byte sector
DEFAULT_SM_COUNT = 132  # H100 SXM; the raw API queries the real device
THREADS_PER_SM = 2048  # resident threads per SM on sm_80 .. sm_90


@dataclass(frozen=True)
class Launch:
    """One kernel launch: PTX entry name and geometry (shared memory is static in the kernels)."""

    entry: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int = 0


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _threads(n: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """grid, block for one thread per item: ceil(n / 128) x 128."""
    return (max(1, _ceil_div(n, THREADS_PER_BLOCK)), 1, 1), (THREADS_PER_BLOCK, 1, 1)


def _chunked(B: int, T: int, C: int, sm_count: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Block (cw channels, nch chunks), grid = B*ceil(C/cw); nch = T split into chunks of >= MIN_CHUNK
    tokens, enough to fill the GPU, at most MAX_CHUNKS; cw from 32 down to 8 until >= 2 blocks per SM."""
    want = _ceil_div(sm_count * THREADS_PER_SM, max(1, B * C))
    nch = max(1, min(T // MIN_CHUNK, MAX_CHUNKS, want))
    cw = max(1, min(_pow2_floor(MAX_BLOCK // nch), 32, _pow2_floor(2 * C - 1) if C > 1 else 1))
    while cw > MIN_CW and B * _ceil_div(C, cw) < 2 * sm_count:  # narrower blocks, more of them
        cw //= 2
    return (max(1, B * _ceil_div(C, cw)), 1, 1), (cw, nch, 1)


# Geometry of each launch form from the op's sizes (by name) and the device's SM count:
#   seq / step: one thread per (b, c); seq4: one thread per (b, 4 channels); chunked: see _chunked;
#   head: one block of N threads per (b, h) (the head's state lines in registers).
_GEOMETRY = {
    "seq": lambda s, sm: _threads(s["B"] * s["C"]),
    "step": lambda s, sm: _threads(s["B"] * s["C"]),
    "seq4": lambda s, sm: _threads(s["B"] * _ceil_div(s["C"], 4)),
    "chunked": lambda s, sm: _chunked(s["B"], s["T"], s["C"], sm),
    "head": lambda s, sm: ((max(1, s["B"] * s["H"]), 1, 1), (s["N"], 1, 1)),
}


def choose_launch(spec: OpSpec, sizes: dict[str, int], sm_count: int = DEFAULT_SM_COUNT) -> str:
    """'auto' resolved. An op with one launch form takes it. The per-channel kernels (WKV4): enough
    (b, c) pairs fill the GPU with one thread each -> streaming forms; too few (batch-1 prefill of a
    small model) -> split T into chunks to get more threads. Thresholds are first guesses to be tuned
    with benchmarks/bench_kernels.py on a real card."""
    launches = spec.kernel.launches
    if len(launches) == 1:
        return launches[0]
    full = sm_count * THREADS_PER_SM
    n = sizes["B"] * sizes["C"]
    if n >= 2 * full and sizes["C"] % 4 == 0:
        return "seq4"
    if n >= full // 4 or sizes["T"] < 2 * MIN_CHUNK:
        return "seq"
    return "chunked"


def _check_sizes(spec: OpSpec, io: str, size: dict[str, int]) -> None:
    op = spec.name
    if io not in IO_DTYPES:
        raise RwkvExportError(f"{op} kernel IO dtype must be 'f32' or 'f16', got {io!r}")
    shown = ", ".join(f"{k}={v}" for k, v in size.items())
    if min(size.values()) < 0 or max(size.values()) >= 2**31 or size["B"] * size.get("H", 1) >= 2**31:
        raise RwkvExportError(f"{op} sizes must fit int32: got {shown}")
    heads = spec.kernel.head_sizes
    if heads and size["N"] not in heads:
        raise RwkvExportError(f"no {op} kernel for head size {size['N']}: compiled sizes are {', '.join(map(str, heads))}")


def plan_launch(op: str, launch: str, io: str, sizes: Sequence[int], sm_count: int = DEFAULT_SM_COUNT) -> Launch:
    """Kernel entry and geometry for one call of `op` with `sizes` (its registry `sizes`, e.g.
    (B, T, C) or (B, T, H, N)) in launch form `launch` ("auto": choose_launch). Any sizes >= 0 (every
    kernel guards its range); N must be a compiled head size."""
    spec = op_spec(op)
    if len(sizes) != len(spec.sizes):
        raise RwkvExportError(f"{op} kernels take sizes ({', '.join(spec.sizes)}), got {tuple(sizes)}")
    size = dict(zip(spec.sizes, (int(s) for s in sizes)))
    _check_sizes(spec, io, size)
    if launch == "auto":
        launch = choose_launch(spec, size, sm_count)
    if launch not in spec.kernel.launches:
        raise RwkvExportError(f"unknown {op} kernel launch form {launch!r}: expected 'auto' or one of {spec.kernel.launches}")
    if launch == "step" and size["T"] != 1:
        raise RwkvExportError(f"the 'step' {op} kernel takes one token: got T={size['T']}; use launch form 'auto'")
    grid, block = _GEOMETRY[launch](size, sm_count)
    return Launch(spec.kernel.entry.format(launch=launch, n=size.get("N", 0), io=io), grid, block)


class PackedArgs:
    """Kernel arguments as cuLaunchKernel's `void** kernelParams`: `address` points at an array
    whose i-th entry points at the i-th value (u64 for pointers, int32 for scalars). Keep this
    object alive until the launch call returns (the driver copies the values at launch)."""

    def __init__(self, pointers: Sequence[int], scalars: Sequence[int], outputs: Sequence[int]):
        for p in (*pointers, *outputs):
            if not isinstance(p, int) or not 0 <= p < 2**64:
                raise RwkvExportError(f"WKV kernel pointer must be an int address, got {p!r}")
        for s in scalars:
            if not isinstance(s, int) or not -(2**31) <= s < 2**31:
                raise RwkvExportError(f"WKV kernel scalar must be an int32, got {s!r}")
        self.values: list[ctypes.c_uint64 | ctypes.c_int32] = [
            *(ctypes.c_uint64(p) for p in pointers),
            *(ctypes.c_int32(s) for s in scalars),
            *(ctypes.c_uint64(p) for p in outputs),
        ]
        self.array = (ctypes.c_void_p * len(self.values))(*(ctypes.addressof(v) for v in self.values))

    @property
    def address(self) -> int:
        return ctypes.addressof(self.array)

    def __len__(self) -> int:
        return len(self.values)


def pack_args(pointers: Sequence[int], scalars: Sequence[int], outputs: Sequence[int]) -> PackedArgs:
    """Inputs, then int32 scalars, then outputs: the kernels' (and TensorRT AOT's) order."""
    return PackedArgs(pointers, scalars, outputs)


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", ctypes.c_uint32),  # code, bits, lanes packed; unused here
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("byte_offset", ctypes.c_uint64),
    ]


_DL_CUDA, _DL_CUDA_MANAGED = 2, 13


def device_pointer(obj: Any, allow_host: bool = False) -> int:
    """Device address of `obj`: an int, a torch tensor, anything with `__cuda_array_interface__`
    (CuPy, Numba, TensorRT tensors) or `__dlpack__`. Host memory is refused unless allow_host
    (the unit tests read numpy through DLPack)."""
    if isinstance(obj, int):
        return obj
    if hasattr(obj, "data_ptr") and hasattr(obj, "is_cuda"):  # torch.Tensor
        if not (obj.is_cuda or allow_host):
            raise RwkvExportError(f"WKV kernels need CUDA tensors, got one on {obj.device}; move it with .cuda()")
        return int(obj.data_ptr())
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        return int(cai["data"][0])
    if hasattr(obj, "__dlpack__"):
        capsule = obj.__dlpack__()
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        tensor = _DLTensor.from_address(get(capsule, b"dltensor"))  # DLManagedTensor starts with it
        if tensor.device.device_type not in (_DL_CUDA, _DL_CUDA_MANAGED) and not allow_host:
            raise RwkvExportError(f"WKV kernels need CUDA memory, DLPack device type is {tensor.device.device_type}")
        return int(tensor.data or 0) + int(tensor.byte_offset)
    raise RwkvExportError(f"cannot get a device pointer from {type(obj).__name__}: pass an int, torch tensor, CuPy array or DLPack object")


def launch_raw(
    op: str,
    inputs: Sequence[int],
    outputs: Sequence[int],
    sizes: Sequence[int],
    *,
    io: str = "f32",
    launch: str = "auto",
    stream: int = 0,
    device: int | None = None,
) -> Launch:
    """Enqueue `op` on `stream` from raw device addresses (ints): `inputs` and `outputs` in the op's
    order, contiguous, the IO inputs in `io` ('f32' | 'f16'), the rest float32; a state output may
    equal its input. Returns the Launch used. Asynchronous: no synchronisation, no allocation."""
    spec = op_spec(op)
    if len(inputs) != len(spec.inputs) or len(outputs) != len(spec.outputs):
        raise RwkvExportError(
            f"{op} takes {len(spec.inputs)} inputs {spec.inputs} and {len(spec.outputs)} outputs, got {len(inputs)} and {len(outputs)}"
        )
    plan_launch(op, launch, io, sizes)  # bad requests fail before the driver is touched
    size = dict(zip(spec.sizes, (int(s) for s in sizes)))
    mod = cuda_driver.module_for(device, spec.kernel.unit)
    chosen = choose_launch(spec, size, mod.sm_count) if launch == "auto" else launch
    plan = plan_launch(op, chosen, io, sizes, sm_count=mod.sm_count)
    if any(size[d] == 0 for d in spec.sizes if d != "T"):
        return plan  # nothing to compute (T == 0 still launches: the kernels copy the state)
    scalars = [size[s] for s in spec.kernel.launch_scalars(chosen)]
    cuda_driver.enqueue(mod, plan, pack_args(list(inputs), scalars, list(outputs)), stream)
    return plan


def launch_tensors(op: str, *tensors: Any, launch: str = "auto", stream: int | None = None) -> tuple:
    """`op` on torch CUDA tensors in the op's input order -> its outputs as new tensors: each shaped as
    the registry says, in k's dtype where its `dtype_like` input is an IO input, else float32. The IO
    inputs may be float32 or float16 (one dtype); the other inputs are cast to float32. Runs on
    `stream` (default: torch's current stream of k's device)."""
    import torch

    spec = op_spec(op)
    if len(tensors) != len(spec.inputs):
        raise RwkvExportError(f"{op} takes {len(spec.inputs)} tensors {spec.inputs}, got {len(tensors)}")
    named = dict(zip(spec.inputs, tensors))
    k = named["k"]
    if k.dim() != len(spec.sizes):
        raise RwkvExportError(f"{op} expects k [{', '.join(spec.sizes)}], got shape {tuple(k.shape)}")
    size = dict(zip(spec.sizes, (int(s) for s in k.shape)))
    io_names = spec.kernel.io_inputs
    io = {torch.float32: "f32", torch.float16: "f16"}.get(k.dtype)
    if io is None or any(named[n].dtype != k.dtype for n in io_names):
        raise RwkvExportError(f"{op} kernels take float32 or float16 {', '.join(io_names)} of one dtype")
    for name, t in named.items():
        shape = tuple(size[d] for d in spec.dims[name])
        if tuple(t.shape) != shape:
            raise RwkvExportError(f"{op} {name} must be {list(shape)} for k {list(k.shape)}, got {list(t.shape)}")
        if not t.is_cuda or t.device != k.device:
            raise RwkvExportError(f"{op} kernels need every tensor on one CUDA device; {name} is on {t.device}")
    ins = {n: t.contiguous() if n in io_names else t.to(torch.float32).contiguous() for n, t in named.items()}
    outs = [torch.empty(tuple(size[d] for d in spec.dims[name]), device=k.device,
                        dtype=k.dtype if like in io_names else torch.float32)
            for name, like in zip(spec.outputs, spec.dtype_like)]  # fmt: skip
    if size["T"] == 0:  # nothing to run: the state passes through
        for state_in, state_out in spec.state:
            outs[spec.outputs.index(state_out)].copy_(ins[state_in])
        return tuple(outs)
    if stream is None:
        stream = torch.cuda.current_stream(k.device).cuda_stream
    with torch.cuda.device(k.device):  # torch and the driver agree on the current context
        launch_raw(
            op,
            [t.data_ptr() for t in ins.values()],
            [t.data_ptr() for t in outs],
            tuple(size.values()),
            io=io,
            launch=launch,
            stream=stream,
            device=k.device.index or 0,
        )
    return tuple(outs)
