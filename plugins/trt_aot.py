"""rwkv::WKV4 through the decorator API (`tensorrt.plugin`) with an AOT implementation (TensorRT >= 10.9).

The engine embeds the PTX and the launch geometry, so it runs with no Python and no plugin library
(plain TensorRT runtime, trtexec, Triton). Shapes/dtypes come from `trt_plugin.outputs_like` and
the kernel entry and PTX from the same helpers the class-based plugin and the launcher use: one definition, two
fronts. AOT plugin attributes are not serialized, so nothing is read from node attributes: the
PTX arch is baked in at registration and B, T, C reach the kernel as symbolic int32 arguments.

Not available in TensorRT-RTX (no `tensorrt.plugin`); `register()` raises ImportError there.
Written from the TensorRT docs: not run in this repository's CI (standard TensorRT is not
installable here) and type-checked only loosely (tensorrt-stubs has no `tensorrt.plugin`).
"""

# No `from __future__ import annotations`: tensorrt.plugin validates the decorated functions'
# annotations as objects (trtp.TensorDesc, Tuple[...]), so they must not be strings.
from typing import Any, List, Optional, Tuple, Union

from rwkv_export.kernels import launcher, trt_plugin

PLUGIN_ID = f"{trt_plugin.PLUGIN_NAMESPACE}::{trt_plugin.PLUGIN_NAME}"  # "rwkv::WKV4"
# Every I/O float32 (7 inputs, then 4 outputs): the op is float32 in every exported graph. The
# class-based front also takes float16 k/v/y; here that would need a dependent "FP32|FP16" type
# string, which stays out until a GPU build can check it.
TYPE_COMBINATION = ", ".join(["FP32"] * 11)

_registered_arch: Optional[str] = None


def register(ptx_arch: str = "sm_75") -> None:
    """Define rwkv::WKV4 (and WKV5/6/7, plugins/trt_aot_matrix.py) with `tensorrt.plugin` (register +
    autotune + aot_impl), once per process."""
    global _registered_arch
    if _registered_arch is not None:
        if _registered_arch != ptx_arch:
            raise RuntimeError(f"{PLUGIN_ID} is already registered for {_registered_arch}; one PTX arch per process")
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    if not hasattr(trt, "QuickPluginCreationRequest"):
        raise ImportError(f"TensorRT {trt.__version__} has no AOT plugins; need >= 10.9 (or build with --plugin python)")
    _define(trtp, trt, ptx_arch)
    from rwkv_export.kernels import trt_aot_matrix

    trt_aot_matrix.define(trtp, trt, ptx_arch)  # rwkv::WKV5, WKV6, WKV7
    _registered_arch = ptx_arch


def _define(trtp: Any, trt: Any, ptx_arch: str) -> None:
    dtype_names = {trt.float32: "float32", trt.float16: "float16"}

    @trtp.register(PLUGIN_ID)
    def wkv4_desc(
        time_decay: trtp.TensorDesc, time_first: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
        aa: trtp.TensorDesc, bb: trtp.TensorDesc, pp: trtp.TensorDesc,
    ) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
        # The shared rule: y like k, the three state outputs like aa.
        like = trt_plugin.outputs_like((time_decay, time_first, k, v, aa, bb, pp))
        return tuple(desc.like() for desc in like)

    @trtp.autotune(PLUGIN_ID)
    def wkv4_autotune(
        time_decay: trtp.TensorDesc, time_first: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
        aa: trtp.TensorDesc, bb: trtp.TensorDesc, pp: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc],
    ) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(TYPE_COMBINATION, "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def wkv4_aot(
        time_decay: trtp.TensorDesc, time_first: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
        aa: trtp.TensorDesc, bb: trtp.TensorDesc, pp: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc],
        tactic: int,
    ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        batch, seq, channels = k.shape_expr[0], k.shape_expr[1], k.shape_expr[2]
        params = trtp.KernelLaunchParams()
        # launcher.plan_launch("seq", ...) geometry, as shape expressions resolved at run time.
        params.grid_x = trtp.cdiv(batch * channels, launcher.THREADS_PER_BLOCK)
        params.block_x = launcher.THREADS_PER_BLOCK
        params.shared_mem = 0
        # Kernel parameters: the 7 inputs, then these int32 scalars, then the 4 outputs.
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (batch, seq, channels)])
        entry = trt_plugin.kernel_entry(dtype_names[k.dtype])
        return entry.encode(), trt_plugin.compile_ptx(ptx_arch).encode(), params, scalars
