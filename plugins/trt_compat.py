"""One door to TensorRT: standard `tensorrt` or TensorRT-RTX (`tensorrt_rtx_bindings`), imported lazily.

Nothing here imports TensorRT at module import time, so the package imports on machines without it;
`load()` imports on demand and raises `TensorRTUnavailable` with a one-line install hint.

TensorRT-RTX quirk handled here: its wheel ships only `libtensorrt_rtx.so.1`, but when the ONNX
parser maps a node to a plugin it dlopens `libtensorrt_rtx.so` and calls std::terminate if that
fails. `rtx_library_dir()` creates the missing link in a private cache directory (never inside
site-packages) that build subprocesses get on LD_LIBRARY_PATH (`subprocess_env()`); glibc reads
LD_LIBRARY_PATH only at process start, which is one more reason builds run in a subprocess.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

from rwkv_export.fileio import user_cache_dir

TARGETS = ("tensorrt", "tensorrt-rtx")
MODULES = {"tensorrt": ("tensorrt",), "tensorrt-rtx": ("tensorrt_rtx_bindings", "tensorrt_rtx")}
INSTALL_HINT = {
    "tensorrt": "install standard TensorRT >= 10.9 from NVIDIA (pip install tensorrt-cu12 from NVIDIA's "
    "index), or build for TensorRT-RTX with --target tensorrt-rtx",
    "tensorrt-rtx": "pip install 'rwkv-export[tensorrt]' (TensorRT-RTX wheels from PyPI)",
}
RTX_LIBS_PACKAGE = "tensorrt_rtx_libs"
RTX_LIB = "libtensorrt_rtx.so"


class TensorRTUnavailable(ImportError):
    """The requested TensorRT flavour cannot be imported; the message says how to install it."""


def _find_module(target: str) -> str | None:
    for name in MODULES[target]:
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def available_targets() -> list[str]:
    """Targets whose Python module is installed (found without importing it)."""
    return [t for t in TARGETS if _find_module(t) is not None]


def default_target() -> str | None:
    """Standard TensorRT when installed (it runs engines on any GPU), else TensorRT-RTX, else None."""
    found = available_targets()
    return found[0] if found else None


def load(target: str | None = None) -> ModuleType:
    """Import and return the TensorRT module for `target` ("tensorrt" / "tensorrt-rtx" / None = default)."""
    target = target or default_target()
    if target is None:
        raise TensorRTUnavailable(
            "TensorRT is not installed (neither tensorrt nor tensorrt_rtx_bindings imports): " + INSTALL_HINT["tensorrt-rtx"]
        )
    if target not in MODULES:
        raise ValueError(f"unknown TensorRT target {target!r}; expected one of {', '.join(TARGETS)}")
    name = _find_module(target)
    if name is None:
        raise TensorRTUnavailable(f"{target} is not installed: {INSTALL_HINT[target]}")
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # installed but broken (missing libs wheel, wrong CUDA major)
        raise TensorRTUnavailable(f"{target} is installed but fails to import ({exc}): {INSTALL_HINT[target]}") from exc


def rtx_library_dir() -> Path | None:
    """A directory holding `libtensorrt_rtx.so` -> the wheel's `.so.1`, created idempotently.

    Returns None when the RTX libs wheel is absent, or when the wheel itself already has the link
    (then the libraries' RPATH $ORIGIN finds it and nothing is needed).
    """
    spec = importlib.util.find_spec(RTX_LIBS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(next(iter(spec.submodule_search_locations)))
    real = libs / f"{RTX_LIB}.1"
    if not real.exists() or (libs / RTX_LIB).exists():
        return None
    # One directory per wheel location, so two venvs with different RTX versions never share a link.
    key = hashlib.sha256(str(libs.resolve()).encode()).hexdigest()[:16]
    link_dir = user_cache_dir("trt-rtx-libs", key)
    link = link_dir / RTX_LIB
    if link.is_symlink() and Path(os.readlink(link)) == real.resolve():
        return link_dir
    link_dir.mkdir(parents=True, exist_ok=True)
    # Create under a unique name then rename: concurrent builds never see a half-made link.
    tmp = link_dir / f".{RTX_LIB}.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(real.resolve(), tmp)
    os.replace(tmp, link)
    return link_dir


def subprocess_env(target: str | None) -> dict[str, str]:
    """Environment for a build subprocess: os.environ plus the RTX link directory on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    if target == "tensorrt-rtx":
        link_dir = rtx_library_dir()
        if link_dir is not None:
            old = env.get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(link_dir), old) if p)
    return env
