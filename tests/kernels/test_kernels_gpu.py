"""The WKV CUDA kernels (plugins/wkv4.cu, plugins/wkv_heads.cu) on a real GPU against the float64
numpy oracle (skips without CUDA), through plugins/launcher.py for every op of the registry.

Run: python -m pytest -m gpu tests/kernels/test_kernels_gpu.py  (scripts/gpu_check.sh does this).
Same bounds as the CPU proof (tests/kernels/test_kernels_cpu.py): no worse than 2x numpy's float32 run
of the same formula + 1e-5 (WKV5/6/7: relative to max |ref|), plus one fp16 rounding of WKV4's y
for float16 I/O; float16 inputs are rounded before the oracle.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from rwkv_export.ops.registry import HEAD_SIZES, OPS
from rwkv_export.ops.wkv4 import wkv4_numpy
from tests.ops._wkv_cases import HEAD_OPS, as_read, assert_close, assert_wkv4_close, make_case, oracle, wkv4_as_read, wkv4_errors

HAVE_BINDINGS = importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
    pytest.mark.skipif(not HAVE_BINDINGS, reason="cuda-bindings not installed: pip install 'cuda-bindings>=13.0,<14'"),
]


def _launch_tensors(op: str, *tensors, **kw):  # type: ignore[no-untyped-def]
    from rwkv_export.kernels.launcher import launch_tensors

    return launch_tensors(op, *tensors, **kw)


# --- WKV4 ----------------------------------------------------------------------------------------

FORMS = ("seq", "seq4", "chunked", "auto")

# (B, T, C, state, extreme): T to 8192, batch 1-64, channels to 4096, |k| ~ 60 on a quarter of them.
CASES = [
    (1, 1, 768, "warm", True),
    (3, 5, 37, "zero", True),
    (1, 8192, 768, "zero", True),
    (1, 2048, 4096, "warm", True),
    (8, 1000, 1027, "zero", True),
    (4, 4096, 512, "warm", False),
    (64, 128, 4096, "warm", True),
    (64, 64, 4096, "zero", False),
]
_oracles: dict[tuple, tuple] = {}


def _case(B, T, C, state, extreme, io):
    """Inputs as the kernel reads them, the float64 oracle and numpy's float32 errors (cached)."""
    key = (B, T, C, state, extreme, io)
    if key not in _oracles:
        case = tuple(make_case("WKV4", (B, T, C), seed=B * 7919 + T * 31 + C, state=state, extreme=extreme).values())
        case = wkv4_as_read(case, io)
        ref = oracle(*case)
        base = wkv4_errors(wkv4_numpy(*case, dtype=np.float32), ref, case[3])
        _oracles[key] = (case, ref, base)
    return _oracles[key]


def _to_cuda(case, io):
    dt = torch.float32 if io == "f32" else torch.float16
    td, tf, k, v, aa, bb, pp = (torch.from_numpy(np.ascontiguousarray(x)).cuda() for x in case)
    return td, tf, k.to(dt), v.to(dt), aa, bb, pp


def _numpy(out):
    return [o.float().cpu().numpy() for o in out]


def _assert_close_to_oracle(got, case, ref, base, io, label):  # type: ignore[no-untyped-def]
    return assert_wkv4_close(got, case, io, label, ref=ref, base=base)


@pytest.mark.parametrize("io", ["f32", "f16"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("B,T,C,state,extreme", CASES)
def test_kernel_matches_float64_oracle(form, io, B, T, C, state, extreme):
    case, ref, base = _case(B, T, C, state, extreme, io)
    out = _launch_tensors("WKV4", *_to_cuda(case, io), launch=form)
    torch.cuda.synchronize()
    assert out[0].dtype == (torch.float32 if io == "f32" else torch.float16) and out[1].dtype == torch.float32
    _assert_close_to_oracle(_numpy(out), case, ref, base, io, f"{form}/{io} B={B} T={T} C={C} {state} extreme={extreme}")


@pytest.mark.parametrize("io", ["f32", "f16"])
@pytest.mark.parametrize("form", ["seq", "chunked", "auto"])
def test_prefill_then_step_equals_stepping(form, io):
    B, T0, steps, C = 2, 1500, 6, 768
    case, ref, base = _case(B, T0 + steps, C, "warm", True, io)
    td, tf, k, v, aa, bb, pp = _to_cuda(case, io)
    y0, aa_s, bb_s, pp_s = _launch_tensors("WKV4", td, tf, k[:, :T0], v[:, :T0], aa, bb, pp, launch=form)
    ys = [y0]
    for t in range(T0, T0 + steps):
        y_t, aa_s, bb_s, pp_s = _launch_tensors("WKV4", td, tf, k[:, t : t + 1], v[:, t : t + 1], aa_s, bb_s, pp_s, launch="step")
        ys.append(y_t)
    got = _numpy((torch.cat(ys, dim=1), aa_s, bb_s, pp_s))
    _assert_close_to_oracle(got, case, ref, base, io, f"{form} prefill {T0} + {steps} steps ({io})")
    if form == "seq":  # same per-token code in the same order as one prefill: equal to rounding
        full = _numpy(_launch_tensors("WKV4", td, tf, k, v, aa, bb, pp, launch="seq"))
        for name, g, f in zip(("y", "aa", "bb", "pp"), got, full):
            np.testing.assert_allclose(g, f, rtol=1e-6, atol=1e-6, err_msg=f"seq prefill+step vs prefill: {name}")


def test_state_in_place_and_side_stream():
    # aa_out == aa (TensorRT may bind the same buffer) on a non-default stream.
    from rwkv_export.kernels.launcher import launch_raw

    case, ref, base = _case(8, 1000, 1027, "zero", True, "f32")
    td, tf, k, v, aa, bb, pp = _to_cuda(case, "f32")
    y = torch.empty_like(k)
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    for form in ("seq", "seq4", "chunked"):
        aa_i, bb_i, pp_i = aa.clone(), bb.clone(), pp.clone()
        with torch.cuda.stream(stream):
            launch_raw(
                "WKV4",
                [t.data_ptr() for t in (td, tf, k, v, aa_i, bb_i, pp_i)],
                [t.data_ptr() for t in (y, aa_i, bb_i, pp_i)],
                (8, 1000, 1027),
                io="f32",
                launch=form,
                stream=stream.cuda_stream,
                device=k.device.index,
            )
        stream.synchronize()
        _assert_close_to_oracle(_numpy((y, aa_i, bb_i, pp_i)), case, ref, base, "f32", f"{form} in-place state")


def test_torch_op_cuda_matches_cpu():
    import rwkv_export.kernels.torch_cuda  # noqa: F401  (registers rwkv_export::wkv4 .. wkv7)

    case, ref, base = _case(4, 4096, 512, "warm", False, "f32")
    cpu = [torch.from_numpy(np.ascontiguousarray(x)) for x in case]
    got_gpu = _numpy(torch.ops.rwkv_export.wkv4(*(t.cuda() for t in cpu)))
    got_cpu = _numpy(torch.ops.rwkv_export.wkv4(*cpu))
    _assert_close_to_oracle(got_gpu, case, ref, base, "f32", "torch op cuda")
    np.testing.assert_allclose(got_gpu[0], got_cpu[0], rtol=0, atol=4 * base["y_abs"] + 2e-5, err_msg="torch op y: CUDA vs CPU")


def test_zero_length_and_cupy_pointer():
    from rwkv_export.kernels.launcher import device_pointer

    case, _, _ = _case(3, 5, 37, "zero", True, "f32")
    td, tf, k, v, aa, bb, pp = _to_cuda(case, "f32")
    y, aa_o, _, pp_o = _launch_tensors("WKV4", td, tf, k[:, :0], v[:, :0], aa, bb, pp)
    assert y.shape == (3, 0, 37) and torch.equal(aa_o, aa) and torch.equal(pp_o, pp)
    cupy = pytest.importorskip("cupy", reason="CuPy not installed: pointer check via __cuda_array_interface__ skipped")
    arr = cupy.arange(10, dtype=cupy.float32)
    assert device_pointer(arr) == arr.data.ptr
    assert device_pointer(arr[2:]) == arr.data.ptr + 8


# --- WKV5, WKV6, WKV7 ------------------------------------------------------------------------------

# (B, T, H, N, state): a 169M-like layer (12 heads of 64) over a long prompt, a batch, decode steps
# of a large batch, the widest head, T == 0.
HEAD_CASES = [
    (1, 1024, 12, 64, "zero"),
    (4, 256, 12, 64, "warm"),
    (64, 1, 32, 64, "warm"),
    (2, 128, 4, 128, "warm"),
    (3, 0, 2, 64, "warm"),
]


def _launch(op: str, case: dict[str, np.ndarray], io: str):  # type: ignore[no-untyped-def]
    dt = torch.float16 if io == "f16" else torch.float32
    pos = OPS[op].io_positions
    tensors = [torch.from_numpy(a).cuda().to(dt if i in pos else torch.float32) for i, a in enumerate(case.values())]
    y, state = _launch_tensors(op, *tensors)
    torch.cuda.synchronize()
    return y.cpu().numpy(), state.cpu().numpy()


@pytest.mark.parametrize("op", HEAD_OPS)
@pytest.mark.parametrize("io", ("f32", "f16"))
@pytest.mark.parametrize("B,T,H,N,state", HEAD_CASES)
def test_head_kernels_match_oracle(op: str, io: str, B: int, T: int, H: int, N: int, state: str) -> None:
    case = make_case(op, (B, T, H, N), seed=B * 31 + T + N, state=state)
    got = _launch(op, case, io)
    err = assert_close(op, got, as_read(op, case, io), f"{op} {io} B={B} T={T} H={H} N={N}")
    print(f"{op} {io} B={B} T={T} H={H} N={N}: y {err['y']:.2e} state {err['state']:.2e}")


@pytest.mark.parametrize("op", HEAD_OPS)
@pytest.mark.parametrize("N", HEAD_SIZES)
def test_every_head_size_on_gpu(op: str, N: int) -> None:
    case = make_case(op, (2, 33, 3, N), seed=N, state="warm")
    assert_close(op, _launch(op, case, "f32"), case, f"{op} N={N}")


@pytest.mark.parametrize("op", HEAD_OPS)
def test_state_out_may_alias_state_in(op: str) -> None:
    from rwkv_export.kernels.launcher import launch_raw

    case = make_case(op, (2, 40, 3, 64), seed=5, state="warm")
    ts = [torch.from_numpy(a).cuda() for a in case.values()]
    B, T, H, N = case["k"].shape
    y = torch.empty((B, T, H, N), device="cuda")
    state = ts[-1]
    launch_raw(
        op,
        [t.data_ptr() for t in ts],
        [y.data_ptr(), state.data_ptr()],
        (B, T, H, N),
        stream=torch.cuda.current_stream().cuda_stream,
        device=0,
    )
    torch.cuda.synchronize()
    assert OPS[op].io_positions
    assert_close(op, (y.cpu().numpy(), state.cpu().numpy()), case, f"{op} in place")


def test_matches_the_torch_reference_model_layer() -> None:
    """The kernel agrees with custom_ops' torch op on CUDA float32 (the model's own WKV call)."""
    from rwkv_export.ops.wkv6 import wkv6

    case = make_case("WKV6", (2, 64, 4, 64), seed=11, state="warm")
    ts = [torch.from_numpy(a).cuda() for a in case.values()]
    y_k, s_k = _launch_tensors("WKV6", *ts)
    y_t, s_t = wkv6(*ts)
    scale = max(1.0, float(y_t.abs().max()))
    assert float((y_k - y_t).abs().max()) / scale < 1e-5 and float((s_k - s_t).abs().max()) / max(1.0, float(s_t.abs().max())) < 1e-5
