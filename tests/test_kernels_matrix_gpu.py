"""The WKV5/6/7 CUDA kernels (plugins/wkv_matrix.cu) on a real GPU against the float64 oracle
(skips without CUDA). Same bound as the CPU proof (tests/test_kernels_matrix_cpu.py): no worse than
2x numpy's own float32 run + 1e-5, relative to max |ref|; float16 inputs rounded before the oracle.

Run: python -m pytest -m gpu tests/test_kernels_matrix_gpu.py  (scripts/gpu_check.sh does this).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from rwkv_export.kernels.nvrtc import HEAD_SIZES
from tests._wkv_matrix_cases import as_read, assert_close, make_case

HAVE_BINDINGS = importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"),
    pytest.mark.skipif(not HAVE_BINDINGS, reason="cuda-bindings not installed: pip install 'cuda-bindings>=13.0,<14'"),
]
OPS = ("WKV5", "WKV6", "WKV7")
# (B, T, H, N, state): a 169M-like layer (12 heads of 64) over a long prompt, a batch, decode steps
# of a large batch, the widest head, T == 0.
CASES = [
    (1, 1024, 12, 64, "zero"),
    (4, 256, 12, 64, "warm"),
    (64, 1, 32, 64, "warm"),
    (2, 128, 4, 128, "warm"),
    (3, 0, 2, 64, "warm"),
]


def _launch(op: str, case: dict[str, np.ndarray], io: str):
    from rwkv_export.kernels.matrix_launcher import io_inputs, matrix_launch

    dt = torch.float16 if io == "f16" else torch.float32
    pos = io_inputs(op)
    tensors = [torch.from_numpy(a).cuda().to(dt if i in pos else torch.float32) for i, a in enumerate(case.values())]
    y, state = matrix_launch(op, *tensors)
    torch.cuda.synchronize()
    return y.cpu().numpy(), state.cpu().numpy()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("io", ("f32", "f16"))
@pytest.mark.parametrize("B,T,H,N,state", CASES)
def test_matches_oracle(op: str, io: str, B: int, T: int, H: int, N: int, state: str) -> None:
    case = make_case(op, B, T, H, N, seed=B * 31 + T + N, state=state)
    got = _launch(op, case, io)
    err = assert_close(op, got, as_read(case, io), f"{op} {io} B={B} T={T} H={H} N={N}")
    print(f"{op} {io} B={B} T={T} H={H} N={N}: y {err['y']:.2e} state {err['state']:.2e}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("N", HEAD_SIZES)
def test_every_head_size(op: str, N: int) -> None:
    case = make_case(op, 2, 33, 3, N, seed=N, state="warm")
    assert_close(op, _launch(op, case, "f32"), case, f"{op} N={N}")


@pytest.mark.parametrize("op", OPS)
def test_state_out_may_alias_state_in(op: str) -> None:
    from rwkv_export.kernels.matrix_launcher import io_inputs, matrix_launch_raw

    case = make_case(op, 2, 40, 3, 64, seed=5, state="warm")
    ts = [torch.from_numpy(a).cuda() for a in case.values()]
    B, T, H, N = case["k"].shape
    y = torch.empty((B, T, H, N), device="cuda")
    state = ts[-1]
    matrix_launch_raw(op, [t.data_ptr() for t in ts], [y.data_ptr(), state.data_ptr()], B=B, T=T, H=H, N=N,
                      stream=torch.cuda.current_stream().cuda_stream, device=0)
    torch.cuda.synchronize()
    assert io_inputs(op)
    assert_close(op, (y.cpu().numpy(), state.cpu().numpy()), case, f"{op} in place")


def test_matches_the_torch_reference_model_layer() -> None:
    """The kernel agrees with custom_ops' torch op on CUDA float32 (the model's own WKV call)."""
    from rwkv_export.ops.wkv6 import wkv6
    from rwkv_export.kernels.matrix_launcher import matrix_launch

    case = make_case("WKV6", 2, 64, 4, 64, seed=11, state="warm")
    ts = [torch.from_numpy(a).cuda() for a in case.values()]
    y_k, s_k = matrix_launch("WKV6", *ts)
    y_t, s_t = wkv6(*ts)
    scale = max(1.0, float(y_t.abs().max()))
    assert float((y_k - y_t).abs().max()) / scale < 1e-5 and float((s_k - s_t).abs().max()) / max(1.0, float(s_t.abs().max())) < 1e-5
