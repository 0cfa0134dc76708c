"""Run the WKV4 PTX on a GPU through the CUDA driver API (cuda-python), from raw pointers or tensors.

Three levels:
  - pure (CPU-testable): `plan_launch` picks the kernel form and its grid/block; `pack_args` lays
    pointers and int32 scalars out as the `void**` array cuLaunchKernel reads; `device_pointer`
    gets a device address from torch / `__cuda_array_interface__` / DLPack objects.
  - raw: `wkv4_launch_raw(ptrs..., B=, T=, C=, io=, stream=)`: what a TensorRT plugin's enqueue
    calls with its tensor addresses and stream handle. Nothing is allocated, nothing synchronised.
  - torch: `wkv4_launch(time_decay, time_first, k, v, aa, bb, pp)` -> (y, aa, bb, pp).

Only the raw and torch levels import cuda.bindings.driver, and only when first called.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from typing import Any, Sequence

from rwkv_export.errors import RwkvExportError

FORMS = ("seq", "seq4", "chunked", "step")
THREADS_PER_BLOCK = 128  # 1-D forms: 4 warps, small enough for many resident blocks per SM
MAX_BLOCK = 1024         # chunked: cw * nch threads; the kernel has __launch_bounds__(1024)
MIN_CHUNK = 16           # tokens per chunk: shorter chunks spend more on the scan than they save
MAX_CHUNKS = 128         # with cw >= 8 channels per block (32-byte sectors of f32 loads)
MIN_CW = 8               # narrowest chunked block: 8 f32 channels fill one 32-byte sector
DEFAULT_SM_COUNT = 132   # H100 SXM; the raw API queries the real device
THREADS_PER_SM = 2048    # resident threads per SM on sm_80 .. sm_90


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


def choose_form(B: int, T: int, C: int, sm_count: int = DEFAULT_SM_COUNT) -> str:
    """'auto' resolved: enough (b, c) pairs fill the GPU with one thread each -> streaming forms;
    too few (batch-1 prefill of a small model) -> split T into chunks to get more threads.
    Thresholds are first guesses to be tuned with benchmarks/bench_kernels.py on a real card."""
    full = sm_count * THREADS_PER_SM
    n = B * C
    if n >= 2 * full and C % 4 == 0:
        return "seq4"
    if n >= full // 4 or T < 2 * MIN_CHUNK:
        return "seq"
    return "chunked"


def plan_launch(form: str, io: str, B: int, T: int, C: int, sm_count: int = DEFAULT_SM_COUNT) -> Launch:
    """Kernel entry and geometry for one call. Any B, T, C >= 0 (every kernel guards its range).

    seq / step: one thread per (b, c), grid = ceil(B*C / 128) x 128 threads.
    seq4:       one thread per (b, 4 channels), grid = ceil(B*ceil(C/4) / 128) x 128.
    chunked:    block (cw channels, nch chunks), grid = B*ceil(C/cw); nch = T split into chunks
                of >= MIN_CHUNK tokens, enough to fill the GPU, at most MAX_CHUNKS; cw from 32
                down to 8 until there are >= 2 blocks per SM.
    """
    if io not in ("f32", "f16"):
        raise RwkvExportError(f"WKV4 kernel IO dtype must be 'f32' or 'f16', got {io!r}")
    if min(B, T, C) < 0 or max(B, T, C) >= 2**31:
        raise RwkvExportError(f"WKV4 sizes must fit int32: got B={B}, T={T}, C={C}")
    if form == "auto":
        form = choose_form(B, T, C, sm_count)
    if form == "step" and T != 1:
        raise RwkvExportError(f"the 'step' WKV4 kernel takes one token: got T={T}; use form 'auto'")
    entry = f"wkv4_{form}_{io}"
    if form in ("seq", "step"):
        return Launch(entry, (max(1, _ceil_div(B * C, THREADS_PER_BLOCK)), 1, 1), (THREADS_PER_BLOCK, 1, 1))
    if form == "seq4":
        n = B * _ceil_div(C, 4)
        return Launch(entry, (max(1, _ceil_div(n, THREADS_PER_BLOCK)), 1, 1), (THREADS_PER_BLOCK, 1, 1))
    if form == "chunked":
        want = _ceil_div(sm_count * THREADS_PER_SM, max(1, B * C))
        nch = max(1, min(T // MIN_CHUNK, MAX_CHUNKS, want))
        cw = max(1, min(_pow2_floor(MAX_BLOCK // nch), 32, _pow2_floor(2 * C - 1) if C > 1 else 1))
        while cw > MIN_CW and B * _ceil_div(C, cw) < 2 * sm_count:  # narrower blocks, more of them
            cw //= 2
        return Launch(entry, (max(1, B * _ceil_div(C, cw)), 1, 1), (cw, nch, 1))
    raise RwkvExportError(f"unknown WKV4 kernel form {form!r}: expected 'auto' or one of {FORMS}")


class PackedArgs:
    """Kernel arguments as cuLaunchKernel's `void** kernelParams`: `address` points at an array
    whose i-th entry points at the i-th value (u64 for pointers, int32 for scalars). Keep this
    object alive until the launch call returns (the driver copies the values at launch)."""

    def __init__(self, pointers: Sequence[int], scalars: Sequence[int], outputs: Sequence[int]):
        for p in (*pointers, *outputs):
            if not isinstance(p, int) or not 0 <= p < 2**64:
                raise RwkvExportError(f"WKV4 kernel pointer must be an int address, got {p!r}")
        for s in scalars:
            if not isinstance(s, int) or not -(2**31) <= s < 2**31:
                raise RwkvExportError(f"WKV4 kernel scalar must be an int32, got {s!r}")
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
            raise RwkvExportError(f"WKV4 kernels need CUDA tensors, got one on {obj.device}; move it with .cuda()")
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
            raise RwkvExportError(f"WKV4 kernels need CUDA memory, DLPack device type is {tensor.device.device_type}")
        return int(tensor.data or 0) + int(tensor.byte_offset)
    raise RwkvExportError(f"cannot get a device pointer from {type(obj).__name__}: pass an int, torch tensor, CuPy array or DLPack object")


# --- driver ------------------------------------------------------------------------------------


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise RwkvExportError(f"cannot launch WKV4 kernels: cuda-bindings is not importable ({exc}); pip install 'cuda-bindings>=13.0,<14'") from exc
    return driver


def _check(driver, result, what: str):
    """Unwrap a cuda.bindings (err, *values) tuple or raise a one-line error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        raise RwkvExportError(f"CUDA driver call {what} failed: {name.decode() if name else err}; is a CUDA 13 driver and GPU present?")
    return values[0] if len(values) == 1 else values


class _Module:
    """One compiled kernel unit (nvrtc.UNITS: "wkv4", "matrix") in one context, with its functions
    and the device's SM count."""

    def __init__(self, driver, ctx, dev, unit: str = "wkv4"):
        from rwkv_export.kernels.nvrtc import compile_cubin, compile_ptx

        attr = driver.CUdevice_attribute
        major = _check(driver, driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cuDeviceGetAttribute")
        minor = _check(driver, driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cuDeviceGetAttribute")
        self.sm_count = _check(driver, driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev), "cuDeviceGetAttribute")
        self.arch = f"sm_{major}{minor}"
        self.driver = driver
        self.functions: dict[str, Any] = {}
        # SASS for this exact GPU first (no JIT; loads on any 13.x driver); PTX for sm_80 if
        # NVRTC does not know the arch (a newer GPU), which the driver JIT-compiles forward.
        try:
            image, self.image_kind = compile_cubin(self.arch, unit=unit), "cubin"
        except RwkvExportError:
            image, self.image_kind = compile_ptx("sm_80", unit=unit).encode() + b"\0", "ptx sm_80"
        self.module = _check(driver, driver.cuModuleLoadData(image), f"cuModuleLoadData({self.image_kind})")

    def function(self, entry: str):
        if entry not in self.functions:
            self.functions[entry] = _check(self.driver, self.driver.cuModuleGetFunction(self.module, entry.encode()), f"cuModuleGetFunction({entry})")
        return self.functions[entry]


_modules: dict[tuple[int, str], _Module] = {}   # by (context handle, unit)
_primary: dict[int, tuple] = {}     # device ordinal -> (CUcontext, CUdevice), retained once
_lock = threading.Lock()


def _init(driver) -> None:
    try:
        result = driver.cuInit(0)
    except Exception as exc:  # cuda-bindings raises its own loader error when libcuda is absent
        raise RwkvExportError(f"cannot launch WKV4 kernels: the CUDA driver (libcuda) is not loadable ({type(exc).__name__}); run on a machine with an NVIDIA GPU and a CUDA 13 driver") from exc
    _check(driver, result, "cuInit")


def _module_for(device: int | None, unit: str = "wkv4") -> _Module:
    """Module of `unit` in the current context (device None: what TensorRT's enqueue runs in), or
    in the primary context of `device`, made current if it is not (the context torch uses)."""
    driver = _driver()
    with _lock:
        if not _primary and not _modules:
            _init(driver)
        ctx = _check(driver, driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if device is None and int(ctx) == 0:
            device = 0
        if device is not None:
            if device not in _primary:
                dev = _check(driver, driver.cuDeviceGet(device), f"cuDeviceGet({device})")
                _primary[device] = (_check(driver, driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain"), dev)
            primary, dev = _primary[device]
            if int(ctx) != int(primary):
                _check(driver, driver.cuCtxSetCurrent(primary), "cuCtxSetCurrent")
            ctx = primary
        elif (int(ctx), unit) not in _modules:
            dev = _check(driver, driver.cuCtxGetDevice(), "cuCtxGetDevice")
        if (int(ctx), unit) not in _modules:
            _modules[(int(ctx), unit)] = _Module(driver, ctx, dev, unit)
        return _modules[(int(ctx), unit)]


def wkv4_launch_raw(
    time_decay: int, time_first: int, k: int, v: int, aa: int, bb: int, pp: int,
    y: int, aa_out: int, bb_out: int, pp_out: int,
    *, B: int, T: int, C: int, io: str = "f32", form: str = "auto", stream: int = 0, device: int | None = None,
) -> Launch:
    """Enqueue WKV4 on `stream` from raw device addresses (ints). td, tf [C] f32; k, v, y [B, T, C]
    contiguous in `io` ('f32' | 'f16'); aa, bb, pp and the *_out [B, C] f32 (out may equal in).
    Returns the Launch used. Asynchronous: no synchronisation, no allocation."""
    mod = _module_for(device)
    launch = plan_launch(form, io, B, T, C, sm_count=mod.sm_count)
    if B * C == 0:
        return launch  # nothing to compute (T == 0 still launches: the kernels copy the state)
    scalars = (B, C) if launch.entry.startswith("wkv4_step") else (B, T, C)
    enqueue(mod, launch, pack_args((time_decay, time_first, k, v, aa, bb, pp), scalars, (y, aa_out, bb_out, pp_out)), stream)
    return launch


def enqueue(mod: _Module, launch: Launch, args: PackedArgs, stream: int) -> None:
    """cuLaunchKernel of `launch` from `mod` with packed `args` on `stream` (the one launch call)."""
    driver = mod.driver
    _check(driver, driver.cuLaunchKernel(
        mod.function(launch.entry), *launch.grid, *launch.block, launch.shared_mem,
        driver.CUstream(int(stream)), args.address, 0,
    ), f"cuLaunchKernel({launch.entry})")


def wkv4_launch(time_decay, time_first, k, v, aa, bb, pp, *, form: str = "auto", stream: int | None = None):
    """WKV4 on torch CUDA tensors: k, v [B, T, C] float32 or float16, time_decay, time_first [C],
    aa, bb, pp [B, C] (float32) -> (y [B, T, C] in k's dtype, aa, bb, pp [B, C] float32).
    Runs on `stream` (default: torch's current stream of k's device)."""
    import torch

    if k.dim() != 3 or v.shape != k.shape:
        raise RwkvExportError(f"WKV4 expects k, v [B, T, C] of one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    B, T, C = k.shape
    io = {torch.float32: "f32", torch.float16: "f16"}.get(k.dtype)
    if io is None or v.dtype != k.dtype:
        raise RwkvExportError(f"WKV4 kernels take float32 or float16 k, v; got {k.dtype} and {v.dtype}")
    for name, t, shape in (("time_decay", time_decay, (C,)), ("time_first", time_first, (C,)), ("aa", aa, (B, C)), ("bb", bb, (B, C)), ("pp", pp, (B, C))):
        if tuple(t.shape) != shape:
            raise RwkvExportError(f"WKV4 {name} must be {list(shape)} for k {list(k.shape)}, got {list(t.shape)}")
    if not k.is_cuda or any(t.device != k.device for t in (v, time_decay, time_first, aa, bb, pp)):
        raise RwkvExportError(f"WKV4 kernels need every tensor on one CUDA device; k is on {k.device}")
    f32 = [t.to(torch.float32).contiguous() for t in (time_decay, time_first, aa, bb, pp)]
    k, v = k.contiguous(), v.contiguous()
    y = torch.empty_like(k)                                                  # [B, T, C]
    outs = [torch.empty((B, C), dtype=torch.float32, device=k.device) for _ in range(3)]  # [B, C]
    if T == 0:
        for o, s in zip(outs, f32[2:]):
            o.copy_(s)
        return (y, *outs)
    if stream is None:
        stream = torch.cuda.current_stream(k.device).cuda_stream
    with torch.cuda.device(k.device):  # torch and the driver agree on the current context
        wkv4_launch_raw(
            *(t.data_ptr() for t in (f32[0], f32[1], k, v, f32[2], f32[3], f32[4], y, *outs)),
            B=B, T=T, C=C, io=io, form=form, stream=stream, device=k.device.index or 0,
        )
    return (y, *outs)

