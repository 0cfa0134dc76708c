"""NVRTC builds of plugins/wkv_matrix.cu (WKV5/6/7; no GPU needed): every entry, its parameters in
the TensorRT AOT order, a PTX ISA a CUDA 13.0 driver loads, no spills, and the launcher's plan."""

from __future__ import annotations

import importlib.util

import pytest

from rwkv_export.kernels.matrix_launcher import io_inputs, op_inputs, plan_matrix_launch
from rwkv_export.kernels.nvrtc import HEAD_SIZES

HAVE_NVRTC = importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None
pytestmark = pytest.mark.skipif(not HAVE_NVRTC, reason="cuda-bindings (and nvidia-cuda-nvrtc) not installed: pip install 'cuda-bindings>=13.0,<14' 'nvidia-cuda-nvrtc==13.0.*'")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_EXPORT_CACHE", str(tmp_path))
    return tmp_path / "ptx"


def test_every_entry_compiles_with_plugin_parameter_order(cache) -> None:
    from rwkv_export.kernels.nvrtc import compile_ptx, entry_names, ptx_entries, ptx_target, ptx_version

    ptx = compile_ptx("sm_80", unit="matrix")
    assert ptx_target(ptx) == "sm_80"
    major, minor = map(int, ptx_version(ptx).split("."))
    assert (major, minor) <= (9, 0), f"PTX .version {major}.{minor}: a CUDA 13.0 driver refuses it"
    entries = ptx_entries(ptx)
    assert sorted(entries) == sorted(entry_names("matrix"))
    for name, params in entries.items():
        n_in = len(op_inputs(name.split("_")[0].upper()))
        assert params == ["u64"] * n_in + ["u32"] * 3 + ["u64"] * 2, f"{name}: {params}"  # inputs | B T H | y state_out
    assert ".local" not in ptx, "a kernel spills its state line to local memory"
    f16 = ptx.split(".entry wkv7_n64_f16", 1)[1].split(".entry", 1)[0]
    assert "cvt.f32.f16" in f16, "f16 inputs not converted in hardware"


def test_sass_registers_fit_one_block_per_head() -> None:
    from rwkv_export.kernels.nvrtc import entry_names, resource_usage

    usage = resource_usage("sm_90", unit="matrix")
    assert sorted(usage) == sorted(entry_names("matrix"))
    for name, u in usage.items():
        n = int(name.split("_")[1][1:])
        assert u["spill_bytes"] == 0, f"{name} spills {u['spill_bytes']} bytes"
        assert u["registers"] <= 255 and u["registers"] >= n, f"{name}: the state line of {n} floats is not in registers: {u}"
        tile = n * (n + 1) * 4 if name.startswith("wkv7") and n <= 64 else 0  # WKV7's coalescing tile
        assert u["smem_bytes"] <= 2 * 5 * n * 4 + n * 4 + tile + 64, f"{name}: {u}"


def test_wkv4_unit_unchanged_by_the_shared_header(cache) -> None:
    from rwkv_export.kernels.nvrtc import compile_ptx, entry_names, ptx_entries, source_sha256

    assert sorted(ptx_entries(compile_ptx("sm_80"))) == sorted(entry_names())
    assert source_sha256("wkv4") != source_sha256("matrix")


@pytest.mark.parametrize("op", ["WKV5", "WKV6", "WKV7"])
def test_plan_one_block_per_head(op: str) -> None:
    for N in HEAD_SIZES:
        launch = plan_matrix_launch(op, "f32", 2, 7, 12, N)
        assert launch.grid == (24, 1, 1) and launch.block == (N, 1, 1) and launch.entry == f"{op.lower()}_n{N}_f32"
    names = op_inputs(op)
    assert {names[i] for i in io_inputs(op)} == ({"r", "k", "v", "a", "b"} & set(names))
