"""NVRTC builds of the WKV kernels (plugins/wkv4.cu, plugins/wkv_heads.cu; no GPU needed).

Checks every extern "C" entry of every unit exists in the PTX for sm_80 and sm_90 with the AOT
plugin's parameter order (input pointers, int32 sizes, output pointers), that the PTX ISA is one a
CUDA 13.0 driver loads (<= 9.0), register and shared-memory use against the launch geometry, the
on-disk cache and the error paths. The launcher's pure parts: tests/kernels/test_kernels_launcher.py.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from rwkv_export.errors import RwkvExportError
from rwkv_export.kernels.nvrtc import UNITS

HAVE_NVRTC = importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None
needs_nvrtc = pytest.mark.skipif(
    not HAVE_NVRTC,
    reason="cuda-bindings (and nvidia-cuda-nvrtc) not installed: pip install 'cuda-bindings>=13.0,<14' 'nvidia-cuda-nvrtc==13.0.*'",
)

# (input pointers, int32 sizes, output pointers) per op, e.g. WKV4: td tf k v aa bb pp | B T C | y aa bb pp
# (its step kernels take B, C: one size fewer); WKV5/6: r k v w_raw u state | B T H | y state.
PARAM_COUNTS = {"WKV4": (7, 3, 4), "WKV5": (6, 3, 2), "WKV6": (6, 3, 2), "WKV7": (7, 3, 2)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_EXPORT_CACHE", str(tmp_path))
    return tmp_path / "ptx"


def _ptx_version_ok(version: str) -> bool:
    major, minor = map(int, version.split("."))
    return (major, minor) <= (9, 0)


# --- NVRTC -------------------------------------------------------------------------------------


def _params(entry: str) -> list[str]:
    """PTX parameter types an entry must have: input pointers, int32 sizes, output pointers (the AOT order)."""
    op = entry.split("_")[0].upper()
    n_in, n_sizes, n_out = PARAM_COUNTS[op]
    return ["u64"] * n_in + ["u32"] * (n_sizes - ("_step_" in entry)) + ["u64"] * n_out


@needs_nvrtc
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_entry_compiles_with_plugin_parameter_order(cache, arch, unit):
    from rwkv_export.kernels.nvrtc import compile_ptx, entry_names, ptx_entries, ptx_target, ptx_version

    ptx = compile_ptx(arch, unit=unit)
    assert ptx_target(ptx) == arch
    assert _ptx_version_ok(ptx_version(ptx)), (
        f"PTX .version {ptx_version(ptx)} > 9.0: a CUDA 13.0 driver refuses it (pin nvidia-cuda-nvrtc==13.0.*)"
    )
    entries = ptx_entries(ptx)
    assert sorted(entries) == sorted(entry_names(unit)), f"PTX entries {sorted(entries)}"
    for name, params in entries.items():
        assert params == _params(name), f"{name} ({arch}) params {params}, expected {_params(name)}"
    assert ".local" not in ptx, "a kernel spills to local memory (per-thread arrays not in registers)"
    if unit == "wkv_heads":
        f16 = ptx.split(".entry wkv7_n64_f16", 1)[1].split(".entry", 1)[0]
        assert "cvt.f32.f16" in f16, "f16 inputs not converted in hardware"


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_sass_fits_launch_geometry(arch):
    from rwkv_export.kernels.nvrtc import entry_names, resource_usage

    usage = resource_usage(arch)
    assert sorted(usage) == sorted(entry_names())
    for name, u in usage.items():
        assert u["spill_bytes"] == 0, f"{name} ({arch}) spills {u['spill_bytes']} bytes to local memory"
        if "_chunked_" in name:  # 1024-thread blocks: 64 registers each at most; static smem <= 48 KB
            assert u["registers"] <= 64 and u["smem_bytes"] <= 48 * 1024, f"{name} ({arch}): {u}"


@needs_nvrtc
def test_fp16_entries_use_hardware_conversions(cache):
    from rwkv_export.kernels.nvrtc import compile_ptx

    ptx = compile_ptx("sm_80")
    body = ptx.split(".entry wkv4_seq_f16", 1)[1].split(".entry", 1)[0]
    assert "cvt.f32.f16" in body and "cvt.rn.f16.f32" in body
    seq4 = ptx.split(".entry wkv4_seq4_f32", 1)[1].split(".entry", 1)[0]
    assert ".v4.f32" in seq4, "seq4 f32 lost its 16-byte vector loads"


@needs_nvrtc
def test_cache_hit_skips_nvrtc(cache, monkeypatch):
    from cuda.bindings import nvrtc as nvrtc_mod

    from rwkv_export.kernels.nvrtc import compile_ptx

    first = compile_ptx("sm_80")
    files = list(cache.glob("*.ptx"))
    assert len(files) == 1 and files[0].read_text() == first

    def refuse(*args, **kwargs):
        raise AssertionError("NVRTC was called on a cache hit")

    monkeypatch.setattr(nvrtc_mod, "nvrtcCompileProgram", refuse)
    assert compile_ptx("sm_80") == first
    with pytest.raises(AssertionError, match="cache hit"):  # a new source is a new key
        compile_ptx("sm_80", source='extern "C" __global__ void other() {}')


@needs_nvrtc
def test_compile_error_is_one_line_with_log(cache):
    from rwkv_export.kernels.nvrtc import compile_ptx

    with pytest.raises(RwkvExportError) as info:
        compile_ptx("sm_80", source='extern "C" __global__ void broken(float* x) { x[0] = undefined_name; }')
    msg = str(info.value)
    assert "\n" not in msg and "NVRTC" in msg and "undefined_name" in msg, msg


@needs_nvrtc
def test_bad_arch_is_reported(cache):
    from rwkv_export.kernels.nvrtc import compile_ptx

    with pytest.raises(RwkvExportError, match="architecture"):
        compile_ptx("ampere")


def test_missing_nvrtc_is_reported(cache, monkeypatch):
    from rwkv_export.kernels.nvrtc import compile_ptx

    # None in sys.modules makes `from cuda.bindings import nvrtc` raise ImportError.
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.nvrtc", None)
    with pytest.raises(RwkvExportError) as info:
        compile_ptx("sm_80")
    msg = str(info.value)
    assert "\n" not in msg and "cuda-bindings" in msg and "pip install" in msg, msg


@needs_nvrtc
def test_sass_registers_fit_one_block_per_head() -> None:
    from rwkv_export.kernels.nvrtc import entry_names, resource_usage

    usage = resource_usage("sm_90", unit="wkv_heads")
    assert sorted(usage) == sorted(entry_names("wkv_heads"))
    for name, u in usage.items():
        n = int(name.split("_")[1][1:])
        assert u["spill_bytes"] == 0, f"{name} spills {u['spill_bytes']} bytes"
        assert u["registers"] <= 255 and u["registers"] >= n, f"{name}: the state line of {n} floats is not in registers: {u}"
        tile = n * (n + 1) * 4 if name.startswith("wkv7") and n <= 64 else 0  # WKV7's coalescing tile
        assert u["smem_bytes"] <= 2 * 5 * n * 4 + n * 4 + tile + 64, f"{name}: {u}"


@needs_nvrtc
def test_units_hash_apart(cache) -> None:
    from rwkv_export.kernels.nvrtc import compile_ptx, entry_names, ptx_entries, source_sha256

    assert sorted(ptx_entries(compile_ptx("sm_80"))) == sorted(entry_names())
    assert source_sha256("wkv4") != source_sha256("wkv_heads")
