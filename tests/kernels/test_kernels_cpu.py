"""CPU proof of the WKV kernels (plugins/wkv4.cu, plugins/wkv_heads.cu): g++ compiles the kernels'
own __host__ __device__ bodies (tests/kernels/wkv4_host.cpp emulates WKV4's grid with the launcher's
geometry; tests/kernels/wkv_heads_host.cpp emulates each WKV5/6/7 block, all threads through one phase before
the next, as the barriers guarantee) and every launch form, head size and IO dtype is checked against
the float64 numpy oracle.

Tolerances: "no worse than 2x numpy's own float32 run of the same formula, plus 1e-5". For WKV4 the
float32 recurrence itself drifts from float64 when pp is large (|k| ~ 60: each `pp - w` rounds at
ulp(60) ~ 4e-6 and that rounding becomes decay error), and the absolute 1e-5 target is asserted
where float32 can reach it (moderate k, zero state); WKV5/6/7 errors are relative to max |ref|.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rwkv_export.kernels.launcher import Launch, plan_launch
from rwkv_export.ops.registry import HEAD_SIZES, OPS
from tests.ops._wkv_cases import HEAD_OPS, as_read, assert_close, assert_wkv4_close, make_case, run_numpy, wkv4_as_read

HERE = Path(__file__).parent
GXX = shutil.which("g++")
pytestmark = pytest.mark.skipif(GXX is None, reason="g++ not found: the CPU kernel proof compiles plugins/*.cu with g++")


def _compile(tmp_path_factory, name: str) -> Path:  # type: ignore[no-untyped-def]
    exe = tmp_path_factory.mktemp(name) / name
    cmd = [GXX, "-O2", "-std=c++17", "-Wall", "-Werror", "-o", str(exe), str(HERE / f"{name}.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"g++ failed on {name}.cpp:\n{proc.stderr}"
    return exe


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    """The WKV4 harness (tests/kernels/wkv4_host.cpp)."""
    return _compile(tmp_path_factory, "wkv4_host")


@pytest.fixture(scope="module")
def heads_harness(tmp_path_factory) -> Path:
    """The WKV5/6/7 harness (tests/kernels/wkv_heads_host.cpp)."""
    return _compile(tmp_path_factory, "wkv_heads_host")


def _case4(B: int, T: int, C: int, **kw):  # type: ignore[no-untyped-def]
    """WKV4 inputs as the tuple (td, tf, k, v, aa, bb, pp)."""
    return tuple(make_case("WKV4", (B, T, C), **kw).values())


# --- WKV4 ----------------------------------------------------------------------------------------


def run_host(exe: Path, form: str, io: str, case, launch: Launch | None = None, misalign: bool = False, inplace: bool = False):
    """The kernel `form` on the CPU -> (y [B, T, C] float32, aa, bb, pp [B, C])."""
    td, tf, k, v, aa, bb, pp = case
    B, T, C = k.shape
    launch = launch or plan_launch("WKV4", form, io, (B, T, C))
    dt = np.float32 if io == "f32" else np.float16
    work = exe.parent / f"io-{form}-{io}"
    inp, out = work.with_suffix(".in"), work.with_suffix(".out")
    inp.write_bytes(b"".join(np.ascontiguousarray(x, t).tobytes() for x, t in zip(case, (np.float32,) * 2 + (dt,) * 2 + (np.float32,) * 3)))
    flags = int(misalign) | 2 * int(inplace)
    args = [form, io, B, T, C, launch.block[0], launch.block[1], launch.grid[0], flags, inp, out]
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, f"wkv4_host {args} exited {proc.returncode}: {proc.stderr}"
    raw = out.read_bytes()
    n = B * T * C * np.dtype(dt).itemsize
    y = np.frombuffer(raw[:n], dt).reshape(B, T, C).astype(np.float32)
    aa_o, bb_o, pp_o = np.frombuffer(raw[n:], np.float32).reshape(3, B, C)
    return y, aa_o, bb_o, pp_o


def assert_matches_oracle(got, case, io: str, label: str, target: float | None = None):  # type: ignore[no-untyped-def]
    return assert_wkv4_close(got, case, io, label, target=target)


CASES = [  # (B, T, C, state, extreme)
    (2, 1, 37, "zero", True),
    (2, 1, 37, "warm", True),
    (3, 100, 37, "zero", True),
    (3, 100, 37, "warm", True),
    (1, 777, 64, "warm", True),
    (2, 4096, 13, "zero", True),
    (2, 4096, 13, "warm", True),
    (3, 4096, 70, "zero", False),
    (2, 1000, 129, "warm", False),
]


@pytest.mark.parametrize("io", ["f32", "f16"])
@pytest.mark.parametrize("form", ["seq", "seq4", "chunked"])
@pytest.mark.parametrize("B,T,C,state,extreme", CASES)
def test_forms_match_float64_oracle(harness, form, io, B, T, C, state, extreme):
    case = wkv4_as_read(_case4(B, T, C, seed=B * 7919 + T * 31 + C, state=state, extreme=extreme), io)
    # Moderate k from the zero state is where float32 reaches 1e-5 relative on y.
    target = 1e-5 if (not extreme and state == "zero") else None
    label = f"{form}/{io} B={B} T={T} C={C} state={state} extreme={extreme}"
    assert_matches_oracle(run_host(harness, form, io, case), case, io, label, target)


@pytest.mark.parametrize(
    "block,label",
    [((8, 8), "T=10 over 8 chunks: L=2, chunks 5..7 empty"), ((1, 3), "one channel per block"), ((32, 32), "cw > C, ragged")],
)
def test_chunked_odd_geometry(harness, block, label):
    B, T, C = 2, 10, 37
    case = _case4(B, T, C, seed=11, state="warm")
    cw, nch = block
    launch = Launch("wkv4_chunked_f32", (B * -(-C // cw), 1, 1), (cw, nch, 1))
    assert_matches_oracle(run_host(harness, "chunked", "f32", case, launch), case, "f32", f"chunked {label}")


def test_chunked_beats_sequential_drift(harness):
    # Large warm pp with slow decay: the serial `pp - w` rounding is what float32 loses; the
    # chunked form subtracts L*w once per chunk, so it must land closer to float64.
    case = _case4(3, 4096, 70, seed=3, state="warm", extreme=False)
    seq = assert_matches_oracle(run_host(harness, "seq", "f32", case), case, "f32", "seq warm")
    chk = assert_matches_oracle(run_host(harness, "chunked", "f32", case), case, "f32", "chunked warm")
    assert chk["y_rel"] < seq["y_rel"], f"chunked y_rel {chk['y_rel']:.2e} not below seq {seq['y_rel']:.2e}"
    assert chk["y_rel"] < 1e-4, f"chunked warm y_rel {chk['y_rel']:.2e}"


@pytest.mark.parametrize("io", ["f32", "f16"])
def test_seq4_scalar_fallback(harness, io):
    # C % 4 != 0 and a misaligned base both force seq4's scalar loads; results must not change.
    for C, misalign in ((37, False), (64, True)):
        case = wkv4_as_read(_case4(2, 50, C, seed=C, state="warm"), io)
        got = run_host(harness, "seq4", io, case, misalign=misalign)
        assert_matches_oracle(got, case, io, f"seq4/{io} C={C} misalign={misalign}")
        ref = run_host(harness, "seq", io, case)
        np.testing.assert_array_equal(got[0], ref[0], err_msg=f"seq4 vs seq y, C={C} misalign={misalign}")


@pytest.mark.parametrize("form", ["seq", "seq4", "chunked"])
def test_state_in_place(harness, form):
    # aa_out == aa (a TensorRT engine may bind one buffer to both), threads in reverse order.
    case = _case4(2, 300, 37, seed=8, state="warm")
    assert_matches_oracle(run_host(harness, form, "f32", case, inplace=True), case, "f32", f"{form} in-place state")


def test_zero_length_copies_state(harness):
    case = _case4(2, 0, 9, seed=1, state="warm")
    for form in ("seq", "seq4", "chunked"):
        y, aa, bb, pp = run_host(harness, form, "f32", case)
        assert y.shape == (2, 0, 9)
        for name, got, want in (("aa", aa, case[4]), ("bb", bb, case[5]), ("pp", pp, case[6])):
            np.testing.assert_array_equal(got, want, err_msg=f"{form} T=0 {name}")


def test_initial_state_is_exactly_neutral(harness):
    # From pp = -1e38, aa = bb = 0 the first y must be exactly v_0 (e1 = 0, e2 = 1), in every form.
    case = _case4(2, 1, 37, seed=2, state="zero")
    for form in ("seq", "seq4", "chunked", "step"):
        y, _, bb, _ = run_host(harness, form, "f32", case)
        np.testing.assert_array_equal(y, case[3], err_msg=f"{form}: y_0 != v_0 from the initial state")
        np.testing.assert_array_equal(bb, np.ones_like(bb), err_msg=f"{form}: bb after one token from zero")


@pytest.mark.parametrize("io", ["f32", "f16"])
def test_prefill_then_step_equals_stepping(harness, io):
    T0, steps = 300, 5
    case = wkv4_as_read(_case4(2, T0 + steps, 37, seed=9, state="warm"), io)
    td, tf, k, v, aa, bb, pp = case
    for form in ("seq", "chunked"):
        y0, aa_s, bb_s, pp_s = run_host(harness, form, io, (td, tf, k[:, :T0], v[:, :T0], aa, bb, pp))
        ys = [y0]
        for t in range(T0, T0 + steps):
            y_t, aa_s, bb_s, pp_s = run_host(harness, "step", io, (td, tf, k[:, t : t + 1], v[:, t : t + 1], aa_s, bb_s, pp_s))
            ys.append(y_t)
        got = (np.concatenate(ys, axis=1), aa_s, bb_s, pp_s)
        assert_matches_oracle(got, case, io, f"{form} prefill {T0} + {steps} steps ({io})")
        if form == "seq":  # the same per-token code in the same order: bit-identical to one prefill
            full = run_host(harness, "seq", io, case)
            for i, name in enumerate(("y", "aa", "bb", "pp")):
                np.testing.assert_array_equal(got[i], full[i], err_msg=f"seq prefill+step vs prefill: {name}")


def test_half_conversions_match_numpy(harness):
    # Every fp16 bit pattern -> float32, and float32 -> fp16 (round to nearest even) on edge cases.
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    halves = bits.view(np.float16).astype(np.float32)
    rng = np.random.default_rng(0)
    edges = np.array(
        [
            0.0,
            -0.0,
            65504.0,
            65519.99,
            65520.0,
            1e9,
            -1e9,
            np.inf,
            -np.inf,
            2.0**-24,
            2.0**-25,
            2.0**-25 * 1.0001,
            2.0**-14,
            2.0**-14 * (1 - 2.0**-11),
            1.0 + 2.0**-11,
            1.0 + 3 * 2.0**-11,
        ],
        np.float32,
    )
    x = np.concatenate(
        [
            halves[np.isfinite(halves)],
            edges,
            rng.normal(0, 100, 20000).astype(np.float32),
            (rng.normal(0, 1, 20000) * 1e-5).astype(np.float32),
        ]
    )
    inp, out = harness.parent / "cvt.in", harness.parent / "cvt.out"
    inp.write_bytes(x.tobytes())
    proc = subprocess.run([str(harness), "cvt", str(x.size), str(inp), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    raw = out.read_bytes()
    got_bits = np.frombuffer(raw[: 2 * x.size], np.uint16)
    back = np.frombuffer(raw[2 * x.size :], np.float32)
    with np.errstate(over="ignore"):  # 1e9 -> inf is the point
        want = x.astype(np.float16)
    want_bits = want.view(np.uint16)
    bad = np.flatnonzero(got_bits != want_bits)
    assert bad.size == 0, f"float->half differs from numpy at {x[bad[:5]]}: {got_bits[bad[:5]]} vs {want_bits[bad[:5]]}"
    np.testing.assert_array_equal(back, want.astype(np.float32))


# --- WKV5, WKV6, WKV7 ------------------------------------------------------------------------------


def run_heads(exe: Path, op: str, io: str, case: dict[str, np.ndarray], inplace: bool = False):
    """The kernel on the CPU -> (y [B, T, H, N], state [B, H, N, N]) float32."""
    B, T, H, N = case["k"].shape
    plan_launch(op, "auto", io, (B, T, H, N))  # the launcher accepts this shape
    dt = np.float16 if io == "f16" else np.float32
    io_pos = OPS[op].io_positions
    work = exe.parent / f"io-{op}-{io}"
    inp, out = work.with_suffix(".in"), work.with_suffix(".out")
    inp.write_bytes(b"".join(a.astype(dt if i in io_pos else np.float32).tobytes() for i, a in enumerate(case.values())))
    args = [op[-1], N, io, B, T, H, 2 * int(inplace), inp, out]
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, f"wkv_heads_host {args} exited {proc.returncode}: {proc.stderr}"
    raw = np.frombuffer(out.read_bytes(), np.float32)
    n = B * T * H * N
    return raw[:n].reshape(B, T, H, N), raw[n:].reshape(B, H, N, N)


@pytest.mark.parametrize("op", HEAD_OPS)
@pytest.mark.parametrize("N", HEAD_SIZES)
def test_every_head_size_f32(heads_harness: Path, op: str, N: int) -> None:
    case = make_case(op, (2, 9, 2, N), seed=N, state="warm")
    assert_close(op, run_heads(heads_harness, op, "f32", case), case, f"{op} N={N} f32")


@pytest.mark.parametrize("op", HEAD_OPS)
@pytest.mark.parametrize("io", ("f32", "f16"))
@pytest.mark.parametrize("B,T,H,state", [(1, 1, 3, "warm"), (3, 64, 2, "zero"), (1, 200, 1, "warm"), (2, 0, 2, "warm")])
def test_shapes_and_io(heads_harness: Path, op: str, io: str, B: int, T: int, H: int, state: str) -> None:
    case = make_case(op, (B, T, H, 64), seed=B * 100 + T, state=state)
    got = run_heads(heads_harness, op, io, case)
    assert_close(op, got, as_read(op, case, io), f"{op} {io} B={B} T={T} H={H}")
    if T == 0:
        assert np.array_equal(got[1], case["state_in"]), "T == 0 must copy the state"


@pytest.mark.parametrize("op", HEAD_OPS)
def test_state_in_place_and_any_thread_order(heads_harness: Path, op: str) -> None:
    case = make_case(op, (2, 17, 2, 32), seed=7, state="warm")
    assert_close(op, run_heads(heads_harness, op, "f32", case, inplace=True), case, f"{op} in place")


@pytest.mark.parametrize("op", HEAD_OPS)
def test_split_sequence_continues(heads_harness: Path, op: str) -> None:
    """Two launches (the second from the first's state) equal one: what prefill-then-step relies on."""
    case = make_case(op, (1, 24, 2, 16), seed=3, state="warm")
    y_all, s_all = run_heads(heads_harness, op, "f32", case)
    first = {n: (a[:, :10] if a.ndim == 4 and a.shape[1] == 24 else a) for n, a in case.items()}
    y1, s1 = run_heads(heads_harness, op, "f32", first)
    second = {n: (a[:, 10:] if a.ndim == 4 and a.shape[1] == 24 else a) for n, a in case.items()}
    second["state_in"] = s1
    y2, s2 = run_heads(heads_harness, op, "f32", second)
    np.testing.assert_allclose(np.concatenate([y1, y2], 1), y_all, rtol=0, atol=1e-5)
    np.testing.assert_allclose(s2, s_all, rtol=0, atol=1e-5)
    ref_y, _ = run_numpy(op, case)
    assert np.abs(y_all - ref_y).max() <= 1e-4 * max(1.0, np.abs(ref_y).max())


def test_launcher_refuses_unknown_sizes() -> None:
    from rwkv_export.errors import RwkvExportError

    with pytest.raises(RwkvExportError, match="head size 48"):
        plan_launch("WKV6", "auto", "f32", (1, 1, 1, 48))
    with pytest.raises(RwkvExportError, match="WKV9"):
        plan_launch("WKV9", "auto", "f32", (1, 1, 1, 64))
    launch = plan_launch("WKV7", "auto", "f16", (3, 100, 12, 64))
    assert launch.entry == "wkv7_n64_f16" and launch.grid == (36, 1, 1) and launch.block == (64, 1, 1)
