"""Compile the WKV kernels (plugins/wkv4.cu, plugins/wkv_heads.cu) to PTX or SASS with NVRTC, cached on disk.

Needs no GPU and no CUDA toolkit: `cuda-bindings` provides the Python API, the
`nvidia-cuda-nvrtc==13.0.*` wheel provides libnvrtc. NVRTC 13.0 writes PTX ISA 9.0, which every
CUDA 13 driver loads (13.5 writes 9.5, which a 13.0 driver refuses), hence the pin.

    ptx = compile_ptx("sm_80")          # str, `.target sm_80` (unit "wkv4": plugins/wkv4.cu)
    ptx_entries(ptx)["wkv4_seq_f32"]    # ['u64', ... 'u32', ... 'u64']
    ptx_version(ptx), ptx_target(ptx)   # '9.0', 'sm_80'
    compile_cubin("sm_90")              # bytes: SASS for exactly that GPU (the launcher's choice)
    compile_ptx("sm_80", unit="wkv_heads")  # plugins/wkv_heads.cu: WKV5, WKV6, WKV7 (per-head state)

A unit is one .cu file, named in each op's registry entry (`spec.kernel.unit`); every unit includes
plugins/wkv_common.cuh, which NVRTC receives as a named header.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from rwkv_export.errors import RwkvExportError
from rwkv_export.fileio import user_cache_dir
from rwkv_export.ops.registry import kernel_units

HERE = Path(__file__).parent
UNITS = {unit: HERE / f"{unit}.cu" for unit in kernel_units()}  # "wkv4", "wkv_heads"
HEADERS = (HERE / "wkv_common.cuh",)
# -std=c++17 for the templates; no --use_fast_math: expf/division stay accurate (the op is checked
# against a float64 oracle to ~1e-5 relative, and __expf loses ~|x|*6e-8 relative at large |x|).
BASE_OPTIONS = ("-std=c++17", "--fmad=true")
_INSTALL_HINT = "install them with: pip install 'cuda-bindings>=13.0,<14' 'nvidia-cuda-nvrtc==13.0.*'"


def entry_names(unit: str = "wkv4") -> list[str]:
    """Every extern "C" kernel a unit defines, e.g. 'wkv4_chunked_f16', 'wkv6_n64_f16'."""
    _unit_path(unit)
    return [entry for spec in kernel_units()[unit] for entry in spec.kernel.entries()]


def _unit_path(unit: str) -> Path:
    if unit not in UNITS:
        raise RwkvExportError(f"unknown kernel unit {unit!r}: expected one of {', '.join(UNITS)}")
    return UNITS[unit]


def source_sha256(unit: str = "wkv4") -> str:
    """sha256 over a unit's .cu and the shared header: what a TensorRT plan records of its kernels."""
    h = hashlib.sha256()
    for path in (_unit_path(unit), *HEADERS):
        h.update(path.read_bytes())
    return h.hexdigest()


def _create_program(nvrtc, text: str, unit: str):
    """nvrtcCreateProgram with the shared header passed by name (NVRTC reads no include paths here)."""
    names = [p.name.encode() for p in HEADERS]
    bodies = [p.read_bytes() for p in HEADERS]
    err, prog = nvrtc.nvrtcCreateProgram(text.encode(), _unit_path(unit).name.encode(), len(HEADERS), bodies, names)
    _check(nvrtc, err, "nvrtcCreateProgram")
    return prog


def _nvrtc():
    """The cuda.bindings.nvrtc module, or a one-line error naming the missing piece."""
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise RwkvExportError(f"cannot compile the WKV kernels: cuda-bindings is not importable ({exc}); {_INSTALL_HINT}") from exc
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the bindings raise their own loader errors when libnvrtc is absent
        raise RwkvExportError(f"cannot compile the WKV kernels: libnvrtc could not be loaded ({exc}); {_INSTALL_HINT}") from exc
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RwkvExportError(f"cannot compile the WKV kernels: nvrtcVersion failed ({err}); {_INSTALL_HINT}")
    return nvrtc, (major, minor)


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the loaded libnvrtc."""
    return _nvrtc()[1]


def _arch_option(arch: str, real: bool = False) -> str:
    match = re.fullmatch(r"(?:sm|compute)_(\d+[a-z]?)", arch)
    if not match:
        raise RwkvExportError(f"bad GPU architecture {arch!r}: expected the form 'sm_80' or 'compute_90'")
    # A virtual arch (compute_XX) makes NVRTC emit PTX; a real one (sm_XX) makes it emit SASS.
    return f"--gpu-architecture={'sm' if real else 'compute'}_{match.group(1)}"


def _check(nvrtc, result, what: str, prog=None) -> None:
    err = result[0] if isinstance(result, tuple) else result
    if err == nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return
    log = ""
    if prog is not None:
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        buf = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, buf)
        log = buf.decode(errors="replace").rstrip("\x00").strip().replace("\n", " | ")
    raise RwkvExportError(f"NVRTC {what} failed ({err.name}): {log or 'no log'}; fix the plugins/*.cu source or the options")


def compile_ptx(arch: str = "sm_80", source: str | None = None, options: tuple[str, ...] = (), unit: str = "wkv4") -> str:
    """PTX text of `source` (default: the unit's .cu file) for `arch`, from the cache when possible.

    The cache key is sha256(source, header, options, NVRTC version), so an edit to the .cu or an NVRTC
    upgrade recompiles. Writes are atomic (temp file + rename): concurrent compiles are safe.
    PTX is what TensorRT AOT plugins take; its ISA version must not exceed the driver's.
    """
    return _compile(arch, source, options, cubin=False, unit=unit).decode()


def compile_cubin(arch: str, source: str | None = None, options: tuple[str, ...] = (), unit: str = "wkv4") -> bytes:
    """SASS (cubin) for exactly `arch`: what the launcher loads when it knows the device, since a
    cubin from a newer 13.x NVRTC still loads on a 13.0 driver (minor-version compatibility)
    where that NVRTC's PTX would not, and it skips the driver's JIT."""
    return _compile(arch, source, options, cubin=True, unit=unit)


def _compile(arch: str, source: str | None, options: tuple[str, ...], cubin: bool, unit: str = "wkv4") -> bytes:
    nvrtc, version = _nvrtc()
    text = _unit_path(unit).read_text() if source is None else source
    opts = (*BASE_OPTIONS, _arch_option(arch, real=cubin), *options)
    headers = [p.read_text() for p in HEADERS]
    key = hashlib.sha256("\0".join((text, *headers, *opts, f"nvrtc {version[0]}.{version[1]}")).encode()).hexdigest()
    path = user_cache_dir("ptx") / f"{unit}-{arch}-{key[:32]}.{'cubin' if cubin else 'ptx'}"
    if path.is_file():
        return path.read_bytes()

    prog = _create_program(nvrtc, text, unit)
    try:
        _check(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts]), f"compile for {arch}", prog)
        get_size, get = (nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN) if cubin else (nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX)
        _, size = get_size(prog)
        buf = b" " * size
        _check(nvrtc, get(prog, buf), "nvrtcGetCUBIN" if cubin else "nvrtcGetPTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    out = buf if cubin else buf.rstrip(b"\x00")

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(out)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a recompile next time
    return out


def resource_usage(arch: str = "sm_90", source: str | None = None, unit: str = "wkv4") -> dict[str, dict[str, int]]:
    """ptxas's report per entry for a real `arch`: {'registers', 'spill_bytes', 'smem_bytes'}.
    Not cached (a check, not a build): the chunked kernel must fit 64 registers to launch 1024
    threads per block, and no kernel should spill to local memory."""
    nvrtc, _ = _nvrtc()
    text = _unit_path(unit).read_text() if source is None else source
    opts = (*BASE_OPTIONS, _arch_option(arch, real=True), "--ptxas-options=-v")
    prog = _create_program(nvrtc, text, unit)
    try:
        _check(nvrtc, nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts]), f"compile for {arch}", prog)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        buf = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, buf)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    usage: dict[str, dict[str, int]] = {}
    for block in buf.decode(errors="replace").split("Compiling entry function")[1:]:
        name = re.match(r"\s*'(\w+)'", block)
        regs = re.search(r"Used (\d+) registers", block)
        if not (name and regs):
            continue
        spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", block))
        smem = re.search(r"(\d+) bytes smem", block)
        usage[name.group(1)] = {"registers": int(regs.group(1)), "spill_bytes": spills, "smem_bytes": int(smem.group(1)) if smem else 0}
    return usage


_ENTRY = re.compile(r"\.visible\s+\.entry\s+(\w+)\s*\(([^)]*)\)", re.S)
_PARAM = re.compile(r"\.param\s+(?:\.align\s+\d+\s+)?\.(\w+)")


def ptx_entries(ptx: str) -> dict[str, list[str]]:
    """{entry name: [PTX parameter type, ...]} from the `.visible .entry` declarations."""
    return {name: _PARAM.findall(params) for name, params in _ENTRY.findall(ptx)}


def ptx_version(ptx: str) -> str:
    """The PTX ISA version line, e.g. '9.0' (a CUDA 13.0 driver loads up to 9.0)."""
    match = re.search(r"^\.version\s+(\d+\.\d+)", ptx, re.M)
    if not match:
        raise RwkvExportError("PTX has no .version line: not NVRTC output?")
    return match.group(1)


def ptx_target(ptx: str) -> str:
    """The PTX `.target`, e.g. 'sm_80'."""
    match = re.search(r"^\.target\s+(\w+)", ptx, re.M)
    if not match:
        raise RwkvExportError("PTX has no .target line: not NVRTC output?")
    return match.group(1)
