"""rwkv::WKV5, WKV6 and WKV7 through the decorator API (`tensorrt.plugin`) with AOT implementations
(TensorRT >= 10.9): the engine embeds the PTX of plugins/wkv_matrix.cu and runs with no Python.

Same rules as the class-based front (plugins/plugin_ops.py): y [B, T, H, N] float32 shaped like k,
state_out like state_in; one block of N threads per (b, h), B, T, H passed as int32 kernel
arguments. The head size N picks the kernel instance, so it must be a build-time constant (it is in
every exported graph: the weights fix it). All I/O float32, as in every exported graph.

Written from the TensorRT documentation and registered by plugins/trt_aot.register(); like that
module it cannot run in this repository's CI (standard TensorRT is not installable here), so the
engine builder picks the class-based Python front for RWKV-5+ unless --plugin aot is asked for.
"""

# No `from __future__ import annotations`: tensorrt.plugin validates the decorated functions'
# annotations as objects.
from typing import Any, List, Tuple, Union

from rwkv_export.kernels import trt_plugin
from rwkv_export.kernels.nvrtc import HEAD_SIZES
from rwkv_export.kernels.plugin_ops import PLUGIN_OPS


def _launch(trtp: Any, op: str, k: Any, ptx_arch: str) -> Tuple[bytes, bytes, Any, Any]:
    """(entry, PTX, launch params, extra int32 args) for one node, from k's shape expressions."""
    batch, seq, heads, head_size = (k.shape_expr[i] for i in range(4))
    if not head_size.is_constant:
        raise ValueError(f"rwkv::{op}: the head size (k's last dim) must be static to pick the kernel")
    n = int(head_size.constant_value())
    if n not in HEAD_SIZES:
        raise ValueError(f"rwkv::{op} has no kernel for head size {n} (compiled: {HEAD_SIZES}); build with --plugin none")
    params = trtp.KernelLaunchParams()
    params.grid_x = batch * heads
    params.block_x = n
    params.shared_mem = 0  # static shared memory only
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (batch, seq, heads)])
    entry = f"{op.lower()}_n{n}_f32"
    return entry.encode(), trt_plugin.compile_ptx(ptx_arch, unit="matrix").encode(), params, scalars


def _combination(op: str) -> str:
    return ", ".join(["FP32"] * (len(PLUGIN_OPS[op].inputs) + 2))  # inputs, then y and state_out


def _outputs(trtp: Any, trt: Any, k: Any, state_in: Any) -> Tuple[Any, Any]:
    return trtp.from_shape_expr(k.shape_expr, dtype=trt.float32), state_in.like()


def _define56(trtp: Any, trt: Any, op: str, ptx_arch: str) -> None:
    """WKV5 and WKV6 share their inputs (r, k, v, w_raw, u, state_in); only the w_raw shape differs."""
    pid = f"{trt_plugin.PLUGIN_NAMESPACE}::{op}"

    @trtp.register(pid)
    def desc(r: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, w_raw: trtp.TensorDesc,
             u: trtp.TensorDesc, state_in: trtp.TensorDesc) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return _outputs(trtp, trt, k, state_in)

    @trtp.autotune(pid)
    def tune(r: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, w_raw: trtp.TensorDesc,
             u: trtp.TensorDesc, state_in: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(_combination(op), "LINEAR")]

    @trtp.aot_impl(pid)
    def aot(r: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, w_raw: trtp.TensorDesc,
            u: trtp.TensorDesc, state_in: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc],
            tactic: int) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        return _launch(trtp, op, k, ptx_arch)


def _define7(trtp: Any, trt: Any, ptx_arch: str) -> None:
    pid = f"{trt_plugin.PLUGIN_NAMESPACE}::WKV7"

    @trtp.register(pid)
    def desc(r: trtp.TensorDesc, w_raw: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, a: trtp.TensorDesc,
             b: trtp.TensorDesc, state_in: trtp.TensorDesc) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return _outputs(trtp, trt, k, state_in)

    @trtp.autotune(pid)
    def tune(r: trtp.TensorDesc, w_raw: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, a: trtp.TensorDesc,
             b: trtp.TensorDesc, state_in: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(_combination("WKV7"), "LINEAR")]

    @trtp.aot_impl(pid)
    def aot(r: trtp.TensorDesc, w_raw: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, a: trtp.TensorDesc,
            b: trtp.TensorDesc, state_in: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc],
            tactic: int) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        return _launch(trtp, "WKV7", k, ptx_arch)


def define(trtp: Any, trt: Any, ptx_arch: str) -> None:
    """Register WKV5, WKV6 and WKV7 (descriptor, autotune, AOT implementation) with `tensorrt.plugin`."""
    _define56(trtp, trt, "WKV5", ptx_arch)
    _define56(trtp, trt, "WKV6", ptx_arch)
    _define7(trtp, trt, ptx_arch)
