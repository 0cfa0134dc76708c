"""CPU proof of plugins/wkv_matrix.cu (WKV5/6/7): g++ compiles the kernels' own __host__ __device__
phases (tests/wkv_matrix_host.cpp emulates each block, all threads through one phase before the
next, as the barriers guarantee) and every op, head size and IO dtype is checked against the
float64 numpy oracle: no worse than 2x numpy's own float32 run + 1e-5 (relative to max |ref|).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rwkv_export.kernels.matrix_launcher import io_inputs, plan_matrix_launch
from rwkv_export.kernels.nvrtc import HEAD_SIZES
from tests._wkv_matrix_cases import as_read, assert_close, make_case, run_numpy

HERE = Path(__file__).parent
GXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(GXX is None, reason="g++ not found: the CPU kernel proof compiles plugins/wkv_matrix.cu with g++")
OPS = ("WKV5", "WKV6", "WKV7")


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("wkvmat") / "wkv_matrix_host"
    cmd = [GXX, "-O2", "-std=c++17", "-Wall", "-Werror", "-o", str(exe), str(HERE / "wkv_matrix_host.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"g++ failed on plugins/wkv_matrix.cu:\n{proc.stderr}"
    return exe


def run_host(exe: Path, op: str, io: str, case: dict[str, np.ndarray], inplace: bool = False):
    """The kernel on the CPU -> (y [B, T, H, N], state [B, H, N, N]) float32."""
    B, T, H, N = case["k"].shape
    plan_matrix_launch(op, io, B, T, H, N)  # the launcher accepts this shape
    dt = np.float16 if io == "f16" else np.float32
    io_pos = io_inputs(op)
    work = exe.parent / f"io-{op}-{io}"
    inp, out = work.with_suffix(".in"), work.with_suffix(".out")
    inp.write_bytes(b"".join(a.astype(dt if i in io_pos else np.float32).tobytes() for i, a in enumerate(case.values())))
    args = [op[-1], N, io, B, T, H, 2 * int(inplace), inp, out]
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, f"wkv_matrix_host {args} exited {proc.returncode}: {proc.stderr}"
    raw = np.frombuffer(out.read_bytes(), np.float32)
    n = B * T * H * N
    return raw[:n].reshape(B, T, H, N), raw[n:].reshape(B, H, N, N)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("N", HEAD_SIZES)
def test_every_head_size_f32(harness: Path, op: str, N: int) -> None:
    case = make_case(op, 2, 9, 2, N, seed=N, state="warm")
    assert_close(op, run_host(harness, op, "f32", case), case, f"{op} N={N} f32")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("io", ("f32", "f16"))
@pytest.mark.parametrize("B,T,H,state", [(1, 1, 3, "warm"), (3, 64, 2, "zero"), (1, 200, 1, "warm"), (2, 0, 2, "warm")])
def test_shapes_and_io(harness: Path, op: str, io: str, B: int, T: int, H: int, state: str) -> None:
    case = make_case(op, B, T, H, 64, seed=B * 100 + T, state=state)
    got = run_host(harness, op, io, case)
    assert_close(op, got, as_read(case, io), f"{op} {io} B={B} T={T} H={H}")
    if T == 0:
        assert np.array_equal(got[1], case["state_in"]), "T == 0 must copy the state"


@pytest.mark.parametrize("op", OPS)
def test_state_in_place_and_any_thread_order(harness: Path, op: str) -> None:
    case = make_case(op, 2, 17, 2, 32, seed=7, state="warm")
    assert_close(op, run_host(harness, op, "f32", case, inplace=True), case, f"{op} in place")


@pytest.mark.parametrize("op", OPS)
def test_split_sequence_continues(harness: Path, op: str) -> None:
    """Two launches (the second from the first's state) equal one: what prefill-then-step relies on."""
    case = make_case(op, 1, 24, 2, 16, seed=3, state="warm")
    y_all, s_all = run_host(harness, op, "f32", case)
    first = {n: (a[:, :10] if a.ndim == 4 and a.shape[1] == 24 else a) for n, a in case.items()}
    y1, s1 = run_host(harness, op, "f32", first)
    second = {n: (a[:, 10:] if a.ndim == 4 and a.shape[1] == 24 else a) for n, a in case.items()}
    second["state_in"] = s1
    y2, s2 = run_host(harness, op, "f32", second)
    np.testing.assert_allclose(np.concatenate([y1, y2], 1), y_all, rtol=0, atol=1e-5)
    np.testing.assert_allclose(s2, s_all, rtol=0, atol=1e-5)
    ref_y, _ = run_numpy(op, case)
    assert np.abs(y_all - ref_y).max() <= 1e-4 * max(1.0, np.abs(ref_y).max())


def test_launcher_refuses_unknown_sizes() -> None:
    from rwkv_export.errors import RwkvExportError

    with pytest.raises(RwkvExportError, match="head size 48"):
        plan_matrix_launch("WKV6", "f32", 1, 1, 1, 48)
    with pytest.raises(RwkvExportError, match="WKV9"):
        plan_matrix_launch("WKV9", "f32", 1, 1, 1, 64)
    launch = plan_matrix_launch("WKV7", "f16", 3, 100, 12, 64)
    assert launch.entry == "wkv7_n64_f16" and launch.grid == (36, 1, 1) and launch.block == (64, 1, 1)
