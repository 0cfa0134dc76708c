"""The launcher's pure parts (plugins/launcher.py; no GPU needed): launch planning for every op,
argument packing against the PTX signatures, device pointers, the torch custom ops on the CPU, and
the raw launch path against a fake CUDA driver.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys

import numpy as np
import pytest
import torch

from rwkv_export.errors import RwkvExportError
from rwkv_export.kernels import cuda_driver, launcher
from rwkv_export.kernels.launcher import Launch, device_pointer, pack_args, plan_launch
from rwkv_export.ops.registry import HEAD_SIZES, OPS
from tests.ops._wkv_cases import HEAD_OPS, make_case, oracle, run_numpy, wkv4_errors

HAVE_NVRTC = importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None
needs_nvrtc = pytest.mark.skipif(
    not HAVE_NVRTC,
    reason="cuda-bindings (and nvidia-cuda-nvrtc) not installed: pip install 'cuda-bindings>=13.0,<14' 'nvidia-cuda-nvrtc==13.0.*'",
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_EXPORT_CACHE", str(tmp_path))
    return tmp_path / "ptx"


def _raw4(*ptrs: int, B: int, T: int, C: int, **kw):  # type: ignore[no-untyped-def]
    """WKV4's raw launch from 11 addresses (7 inputs, 4 outputs)."""
    return launcher.launch_raw("WKV4", ptrs[:7], ptrs[7:], (B, T, C), **kw)


# --- driver errors ---------------------------------------------------------------------------------


def test_missing_driver_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", None)
    with pytest.raises(RwkvExportError, match="cuda-bindings"):
        _raw4(*range(1, 12), B=1, T=1, C=1)


@needs_nvrtc
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; this machine has a GPU")
def test_no_gpu_launch_is_one_line_error():
    with pytest.raises(RwkvExportError) as info:
        _raw4(*range(1, 12), B=1, T=1, C=1)
    assert "\n" not in str(info.value) and "CUDA" in str(info.value), str(info.value)


# --- launch planning ---------------------------------------------------------------------------


def _threads(launch: Launch) -> int:
    return launch.grid[0] * launch.grid[1] * launch.grid[2] * launch.block[0] * launch.block[1] * launch.block[2]


SHAPES = [(1, 1, 1), (1, 512, 768), (1, 4096, 2560), (3, 10, 37), (8, 1000, 4096), (64, 4096, 4096), (2, 0, 5), (1, 7, 1)]


@pytest.mark.parametrize("B,T,C", SHAPES)
@pytest.mark.parametrize("io", ["f32", "f16"])
def test_plan_covers_every_channel(B, T, C, io):
    for form in ("seq", "seq4", "chunked"):
        launch = plan_launch("WKV4", form, io, (B, T, C))
        assert launch.entry == f"wkv4_{form}_{io}"
        assert all(1 <= g < 2**31 for g in launch.grid) and launch.grid[1:] == (1, 1)
        assert _threads(launch) // launch.grid[0] <= 1024, f"{launch}: block over 1024 threads"
        if form == "seq":
            assert _threads(launch) >= B * C
        elif form == "seq4":
            assert _threads(launch) >= B * -(-C // 4)
        else:
            cw, nch, _ = launch.block
            assert launch.grid[0] == max(1, B * -(-C // cw)), launch
            assert 1 <= nch <= launcher.MAX_CHUNKS and cw * nch <= launcher.MAX_BLOCK
            assert nch == 1 or T // nch >= launcher.MIN_CHUNK, f"{launch}: chunks shorter than {launcher.MIN_CHUNK}"


def test_plan_auto_choices():
    assert plan_launch("WKV4", "auto", "f32", (1, 4096, 768)).entry == "wkv4_chunked_f32"  # batch-1 prefill
    assert plan_launch("WKV4", "auto", "f32", (1, 16, 768)).entry == "wkv4_seq_f32"  # too short to chunk
    assert plan_launch("WKV4", "auto", "f16", (64, 4096, 4096)).entry == "wkv4_seq_f16"  # 262k channels
    assert plan_launch("WKV4", "auto", "f32", (256, 512, 4096)).entry == "wkv4_seq4_f32"  # 1M channels
    assert plan_launch("WKV4", "auto", "f32", (256, 512, 4095)).entry == "wkv4_seq_f32"  # C % 4 != 0
    chunked = plan_launch("WKV4", "chunked", "f32", (1, 4096, 768))
    assert chunked.block == (8, 128, 1) and chunked.grid == (96, 1, 1)  # 96 blocks of 1024 threads
    assert plan_launch("WKV4", "step", "f16", (5, 1, 300)) == Launch("wkv4_step_f16", (12, 1, 1), (128, 1, 1))


@pytest.mark.parametrize(
    "args,match",
    [
        (("step", "f32", 1, 2, 8), "one token"),
        (("bogus", "f32", 1, 2, 8), "unknown"),
        (("seq", "bf16", 1, 2, 8), "dtype"),
        (("seq", "f32", 1, 2**31, 8), "int32"),
    ],
)
def test_plan_rejects_bad_requests(args, match):
    launch, io, *sizes = args
    with pytest.raises(RwkvExportError, match=match):
        plan_launch("WKV4", launch, io, sizes)


# --- argument packing --------------------------------------------------------------------------


def _read_back(packed) -> list[int]:
    values = []
    for slot, v in zip(packed.array, packed.values):
        ctype = ctypes.c_uint64 if isinstance(v, ctypes.c_uint64) else ctypes.c_int32
        values.append(ctypes.cast(slot, ctypes.POINTER(ctype)).contents.value)
    return values


def test_pack_args_layout_round_trips():
    ptrs = [0x7F0000000000 + 256 * i for i in range(7)]
    outs = [0x7F1000000000 + 512 * i for i in range(4)]
    packed = pack_args(ptrs, (3, 4096, 768), outs)
    assert len(packed) == 14
    assert _read_back(packed) == [*ptrs, 3, 4096, 768, *outs]
    assert ctypes.cast(packed.address, ctypes.POINTER(ctypes.c_void_p))[7] == ctypes.addressof(packed.values[7])
    assert ctypes.sizeof(packed.values[7]) == 4 and ctypes.sizeof(packed.values[0]) == 8
    assert _read_back(pack_args([2**64 - 1] * 7, (-(2**31), 2**31 - 1), [0] * 4))[7:9] == [-(2**31), 2**31 - 1]


@needs_nvrtc
def test_pack_args_matches_ptx_signatures(cache):
    from rwkv_export.kernels.nvrtc import compile_ptx, ptx_entries

    for name, params in ptx_entries(compile_ptx("sm_80")).items():
        scalars = (1, 2) if "_step_" in name else (1, 2, 3)
        packed = pack_args(range(7), scalars, range(4))
        sizes = [ctypes.sizeof(v) for v in packed.values]
        assert sizes == [8 if p == "u64" else 4 for p in params], f"{name}: packed sizes {sizes} vs PTX {params}"


@pytest.mark.parametrize("bad", [(-1,), (2**64,), (1.5,)])
def test_pack_args_rejects_bad_pointers(bad):
    with pytest.raises(RwkvExportError, match="pointer"):
        pack_args([*bad, 0, 0, 0, 0, 0, 0], (1, 1, 1), [0] * 4)


def test_pack_args_rejects_non_int32_scalars():
    with pytest.raises(RwkvExportError, match="int32"):
        pack_args([0] * 7, (1, 2**31, 1), [0] * 4)


# --- device pointers ---------------------------------------------------------------------------


def test_device_pointer_sources():
    arr = np.arange(16, dtype=np.float32)
    assert device_pointer(1234) == 1234
    assert device_pointer(arr, allow_host=True) == arr.ctypes.data  # DLPack
    assert device_pointer(arr[3:], allow_host=True) == arr.ctypes.data + 12  # data + byte_offset
    t = torch.arange(8, dtype=torch.float32)
    assert device_pointer(t, allow_host=True) == t.data_ptr()

    class FakeCupy:
        __cuda_array_interface__ = {"data": (0xDEAD0000, False), "shape": (4,), "typestr": "<f4", "version": 3}

    assert device_pointer(FakeCupy()) == 0xDEAD0000


def test_device_pointer_refuses_host_memory():
    with pytest.raises(RwkvExportError, match="CUDA"):
        device_pointer(torch.zeros(3))
    with pytest.raises(RwkvExportError, match="CUDA memory"):
        device_pointer(np.zeros(3, np.float32))
    with pytest.raises(RwkvExportError, match="cannot get a device pointer"):
        device_pointer("not a tensor")


# --- torch custom op on the CPU ----------------------------------------------------------------


def test_torch_op_cpu_matches_oracle_and_opcheck():
    import rwkv_export.kernels.torch_cuda  # noqa: F401  (registers rwkv_export::wkv4)

    case = tuple(make_case("WKV4", (2, 33, 9), seed=4, state="warm").values())
    got = torch.ops.rwkv_export.wkv4(*(torch.from_numpy(x) for x in case))
    err = wkv4_errors([g.numpy() for g in got], oracle(*case), case[3])
    assert err["y_rel"] < 1e-4 and err["bb_rel"] < 1e-4, err
    torch.library.opcheck(torch.ops.rwkv_export.wkv4.default, tuple(torch.from_numpy(x) for x in case))
    half = [torch.from_numpy(x) for x in case]
    half[2], half[3] = half[2].half(), half[3].half()
    y16 = torch.ops.rwkv_export.wkv4(*half)[0]
    assert y16.dtype == torch.float16 and y16.shape == (2, 33, 9)
    empty = [torch.from_numpy(x) for x in make_case("WKV4", (2, 0, 9), seed=4, state="warm").values()]
    y0, aa0, _, _ = torch.ops.rwkv_export.wkv4(*empty)
    assert y0.shape == (2, 0, 9) and torch.equal(aa0, empty[4])


@pytest.mark.parametrize("op", HEAD_OPS)
def test_head_torch_ops_cpu_match_oracle_and_opcheck(op: str) -> None:
    import rwkv_export.kernels.torch_cuda  # noqa: F401  (registers rwkv_export::wkv5 .. wkv7)

    fn = getattr(torch.ops.rwkv_export, op.lower())
    case = make_case(op, (2, 5, 2, 8), seed=1, state="warm")
    tensors = tuple(torch.from_numpy(a) for a in case.values())
    torch.library.opcheck(fn.default, tensors)
    y, state = fn(*tensors)
    ref_y, ref_state = run_numpy(op, case)
    assert y.dtype == state.dtype == torch.float32 and y.shape == (2, 5, 2, 8) and state.shape == (2, 2, 8, 8)
    for got, ref in ((y, ref_y), (state, ref_state)):
        assert np.abs(got.numpy() - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max()), op
    empty = tuple(torch.from_numpy(a) for a in make_case(op, (2, 0, 2, 8), seed=1, state="warm").values())
    y0, state0 = fn(*empty)
    assert y0.shape == (2, 0, 2, 8) and torch.equal(state0, empty[-1])


# --- the raw launch path against a fake driver ---------------------------------------------------


class _FakeDriver:
    """Records what launch_raw asks of cuda.bindings.driver; reads the kernel arguments back
    from the void** address during cuLaunchKernel, as the real driver would."""

    class CUresult:
        CUDA_SUCCESS = 0

    class CUdevice_attribute:
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = "major"
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = "minor"
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = "sms"

    def __init__(self):
        self.launches: list[dict] = []
        self.loaded: list[bytes] = []
        self.current = 0x1000  # TensorRT's enqueue: a context is already current
        self.retained: list[int] = []

    CUstream = int

    def cuInit(self, flags):
        return (0,)

    def cuCtxGetCurrent(self):
        return (0, self.current)

    def cuCtxGetDevice(self):
        return (0, 0)

    def cuDeviceGet(self, ordinal):
        return (0, ordinal)

    def cuDevicePrimaryCtxRetain(self, dev):
        self.retained.append(dev)
        return (0, 0x2000 + dev)

    def cuCtxSetCurrent(self, ctx):
        self.current = ctx
        return (0,)

    def cuDeviceGetAttribute(self, attr, dev):
        return (0, {"major": 9, "minor": 0, "sms": 132}[attr])

    def cuModuleLoadData(self, image):
        self.loaded.append(bytes(image))
        return (0, "module")

    def cuModuleGetFunction(self, module, name):
        return (0, name.decode())

    def cuLaunchKernel(self, f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra):
        slots = ctypes.cast(params, ctypes.POINTER(ctypes.c_void_p))
        n_scalars = 2 if "_step_" in f else 3
        values = []
        for i in range(7 + n_scalars + 4):
            ctype = ctypes.c_int32 if 7 <= i < 7 + n_scalars else ctypes.c_uint64
            values.append(ctypes.cast(slots[i], ctypes.POINTER(ctype)).contents.value)
        self.launches.append({"entry": f, "grid": (gx, gy, gz), "block": (bx, by, bz), "stream": stream, "values": values, "extra": extra})
        return (0,)


@needs_nvrtc
def test_raw_launch_calls_driver_with_plan_and_packed_args(cache, monkeypatch):
    fake = _FakeDriver()
    monkeypatch.setattr(cuda_driver, "_driver", lambda: fake)
    monkeypatch.setattr(cuda_driver, "_modules", {})
    monkeypatch.setattr(cuda_driver, "_primary", {})
    ptrs = [0x7000_0000 + 0x100 * i for i in range(11)]
    used = _raw4(*ptrs, B=1, T=4096, C=768, io="f16", stream=0xABC)
    assert used == plan_launch("WKV4", "auto", "f16", (1, 4096, 768), sm_count=132) and used.entry == "wkv4_chunked_f16"
    (call,) = fake.launches
    assert call["entry"] == "wkv4_chunked_f16" and call["grid"] == used.grid and call["block"] == used.block
    assert call["stream"] == 0xABC and call["extra"] == 0
    assert call["values"] == [*ptrs[:7], 1, 4096, 768, *ptrs[7:]]
    assert fake.loaded and fake.loaded[0][:4] == b"\x7fELF", "expected the sm_90 cubin to be loaded"
    _raw4(*ptrs, B=5, T=1, C=300, io="f32", launch="step")
    assert fake.launches[-1]["values"] == [*ptrs[:7], 5, 300, *ptrs[7:]] and len(fake.loaded) == 1  # module reused
    _raw4(*ptrs, B=0, T=3, C=300)  # empty batch: nothing launched
    assert len(fake.launches) == 2
    _raw4(*ptrs, B=1, T=3, C=8, device=1)  # torch's path: device 1's primary context
    assert len(fake.loaded) == 2 and fake.current == 0x2001 and fake.retained == [1]
    _raw4(*ptrs, B=1, T=3, C=8, device=1)
    assert fake.retained == [1], "primary context retained once per device, not per launch"


@pytest.mark.parametrize("op", HEAD_OPS)
def test_plan_one_block_per_head(op: str) -> None:
    for N in HEAD_SIZES:
        launch = plan_launch(op, "auto", "f32", (2, 7, 12, N))
        assert launch.grid == (24, 1, 1) and launch.block == (N, 1, 1) and launch.entry == f"{op.lower()}_n{N}_f32"
    names = OPS[op].inputs
    assert {names[i] for i in OPS[op].io_positions} == ({"r", "k", "v", "a", "b"} & set(names))
