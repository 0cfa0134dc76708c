"""Run the WKV5/6/7 kernels (plugins/wkv_matrix.cu) on a GPU, from raw pointers or torch tensors.

Same three levels as plugins/launcher.py (whose driver plumbing this reuses, module unit "matrix"):
  - pure: `plan_matrix_launch(op, io, B, T, H, N)` -> Launch (entry, grid = B*H blocks of N threads);
    `io_inputs(op)` names the inputs that may be float16.
  - raw: `matrix_launch_raw(op, inputs, outputs, B=, T=, H=, N=, io=, stream=)`: device addresses
    in the op's input order (custom_ops/wkv{5,6,7}.py INPUTS) and (y, state_out). What a TensorRT
    plugin's enqueue calls. Asynchronous; nothing allocated.
  - torch: `matrix_launch(op, *tensors)` -> (y [B, T, H, N] float32, state_out [B, H, N, N] float32).
"""

from __future__ import annotations

from collections.abc import Sequence

from rwkv_export.ops import MATRIX_OPS
from rwkv_export.kernels.launcher import Launch, _module_for, enqueue, pack_args
from rwkv_export.kernels.nvrtc import HEAD_SIZES
from rwkv_export.errors import RwkvExportError

_IO_NAMES = ("r", "k", "v", "a", "b")  # the inputs read in the kernel's IO dtype; the rest are float32


def op_inputs(op: str) -> tuple[str, ...]:
    if op not in MATRIX_OPS:
        raise RwkvExportError(f"no matrix WKV kernel for op {op!r}: expected one of {', '.join(MATRIX_OPS)}")
    return tuple(MATRIX_OPS[op].INPUTS)


def io_inputs(op: str) -> tuple[int, ...]:
    """Positions of the inputs that take the IO dtype (float32 or float16), e.g. (0, 1, 2) for WKV5."""
    return tuple(i for i, name in enumerate(op_inputs(op)) if name in _IO_NAMES)


def plan_matrix_launch(op: str, io: str, B: int, T: int, H: int, N: int) -> Launch:
    """Entry and geometry: one block of N threads per (b, h). Any B, T, H >= 0; N a compiled size."""
    op_inputs(op)
    if io not in ("f32", "f16"):
        raise RwkvExportError(f"{op} kernel IO dtype must be 'f32' or 'f16', got {io!r}")
    if N not in HEAD_SIZES:
        raise RwkvExportError(f"no {op} kernel for head size {N}: compiled sizes are {', '.join(map(str, HEAD_SIZES))}")
    if min(B, T, H) < 0 or max(B, T, H) >= 2**31 or B * H >= 2**31:
        raise RwkvExportError(f"{op} sizes must fit int32: got B={B}, T={T}, H={H}")
    return Launch(f"{op.lower()}_n{N}_{io}", (max(1, B * H), 1, 1), (N, 1, 1))


def matrix_launch_raw(
    op: str, inputs: Sequence[int], outputs: Sequence[int], *, B: int, T: int, H: int, N: int,
    io: str = "f32", stream: int = 0, device: int | None = None,
) -> Launch:
    """Enqueue `op` on `stream` from raw device addresses: `inputs` in the op's order, `outputs`
    (y, state_out); state_out may equal state_in. Returns the Launch used."""
    names = op_inputs(op)
    if len(inputs) != len(names) or len(outputs) != 2:
        raise RwkvExportError(f"{op} takes {len(names)} inputs {names} and 2 outputs, got {len(inputs)} and {len(outputs)}")
    launch = plan_matrix_launch(op, io, B, T, H, N)
    if B * H == 0:
        return launch
    enqueue(_module_for(device, unit="matrix"), launch, pack_args(list(inputs), (B, T, H), list(outputs)), stream)
    return launch


def matrix_launch(op: str, *tensors, stream: int | None = None):
    """`op` on torch CUDA tensors in the op's input order -> (y [B, T, H, N], state_out [B, H, N, N]),
    both float32. r, k, v (, a, b) float32 or float16 (one dtype); w_raw, u, state_in cast to float32."""
    import torch

    names = op_inputs(op)
    if len(tensors) != len(names):
        raise RwkvExportError(f"{op} takes {len(names)} tensors {names}, got {len(tensors)}")
    named = dict(zip(names, tensors))
    k = named["k"]
    if k.dim() != 4:
        raise RwkvExportError(f"{op} expects k [B, T, H, N], got shape {tuple(k.shape)}")
    B, T, H, N = k.shape
    io_pos = io_inputs(op)
    io = {torch.float32: "f32", torch.float16: "f16"}.get(k.dtype)
    if io is None or any(tensors[i].dtype != k.dtype for i in io_pos):
        raise RwkvExportError(f"{op} kernels take float32 or float16 {', '.join(names[i] for i in io_pos)} of one dtype")
    want = {"w_raw": (H, N) if op == "WKV5" else (B, T, H, N), "u": (H, N), "state_in": (B, H, N, N)}
    for name, t in named.items():
        shape = want.get(name, (B, T, H, N))
        if tuple(t.shape) != shape:
            raise RwkvExportError(f"{op} {name} must be {list(shape)} for k {list(k.shape)}, got {list(t.shape)}")
        if not t.is_cuda or t.device != k.device:
            raise RwkvExportError(f"{op} kernels need every tensor on one CUDA device; {name} is on {t.device}")
    ins = [t.contiguous() if i in io_pos else t.to(torch.float32).contiguous() for i, t in enumerate(tensors)]
    y = torch.empty((B, T, H, N), dtype=torch.float32, device=k.device)
    state_out = torch.empty((B, H, N, N), dtype=torch.float32, device=k.device)
    if stream is None:
        stream = torch.cuda.current_stream(k.device).cuda_stream
    with torch.cuda.device(k.device):
        matrix_launch_raw(op, [t.data_ptr() for t in ins], [y.data_ptr(), state_out.data_ptr()],
                          B=B, T=T, H=H, N=N, io=io, stream=stream, device=k.device.index or 0)
    return y, state_out
