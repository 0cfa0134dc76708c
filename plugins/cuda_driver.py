"""The CUDA driver side of the launchers (cuda-python): one loaded kernel unit per context, the launch call.

`module_for(device, unit)` compiles (NVRTC, cached) and loads a .cu unit in the current context (what
TensorRT's enqueue runs in) or in a device's primary context (torch's); `enqueue` is the one
cuLaunchKernel. cuda.bindings.driver is imported only when first needed.
"""

from __future__ import annotations

import threading
from typing import Any

from rwkv_export.errors import RwkvExportError


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise RwkvExportError(
            f"cannot launch the WKV kernels: cuda-bindings is not importable ({exc}); pip install 'cuda-bindings>=13.0,<14'"
        ) from exc
    return driver


def _check(driver, result, what: str):
    """Unwrap a cuda.bindings (err, *values) tuple or raise a one-line error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        raise RwkvExportError(f"CUDA driver call {what} failed: {name.decode() if name else err}; is a CUDA 13 driver and GPU present?")
    return values[0] if len(values) == 1 else values


class _Module:
    """One compiled kernel unit (nvrtc.UNITS: "wkv4", "wkv_heads") in one context, with its functions
    and the device's SM count."""

    def __init__(self, driver, ctx, dev, unit: str):
        from rwkv_export.kernels.nvrtc import compile_cubin, compile_ptx

        attr = driver.CUdevice_attribute
        major = _check(driver, driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cuDeviceGetAttribute")
        minor = _check(driver, driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cuDeviceGetAttribute")
        self.sm_count = _check(
            driver, driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev), "cuDeviceGetAttribute"
        )
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
            self.functions[entry] = _check(
                self.driver, self.driver.cuModuleGetFunction(self.module, entry.encode()), f"cuModuleGetFunction({entry})"
            )
        return self.functions[entry]


_modules: dict[tuple[int, str], _Module] = {}  # by (context handle, unit)
_primary: dict[int, tuple] = {}  # device ordinal -> (CUcontext, CUdevice), retained once
_lock = threading.Lock()


def _init(driver) -> None:
    try:
        result = driver.cuInit(0)
    except Exception as exc:  # cuda-bindings raises its own loader error when libcuda is absent
        raise RwkvExportError(
            f"cannot launch the WKV kernels: the CUDA driver (libcuda) is not loadable ({type(exc).__name__}); run on a machine with an NVIDIA GPU and a CUDA 13 driver"
        ) from exc
    _check(driver, result, "cuInit")


def module_for(device: int | None, unit: str) -> _Module:
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


def enqueue(mod: _Module, launch: Any, args: Any, stream: int) -> None:
    """cuLaunchKernel of `launch` from `mod` with packed `args` on `stream` (the one launch call)."""
    driver = mod.driver
    _check(
        driver,
        driver.cuLaunchKernel(
            mod.function(launch.entry),
            *launch.grid,
            *launch.block,
            launch.shared_mem,
            driver.CUstream(int(stream)),
            args.address,
            0,
        ),
        f"cuLaunchKernel({launch.entry})",
    )
