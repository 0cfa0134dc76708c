"""Every WKV op through TensorRT's decorator API (`tensorrt.plugin`) with an AOT implementation (TensorRT >= 10.9).

The engine embeds the PTX and the launch geometry, so it runs with no Python and no plugin library
(plain TensorRT runtime, trtexec, Triton). One definition, two fronts: shapes and dtypes come from
the op's registry entry (`shape_like` / `dtype_like`, as in the class-based front, plugins/trt_plugin.py),
the kernel entry and geometry from its launch form (`spec.kernel.launches[0]`: WKV4's seq, one thread
per channel; WKV5/6/7's head, one block of N threads per head), the PTX from plugins/nvrtc.py. AOT
plugin attributes are not serialized, so nothing is read from node attributes: the PTX arch is baked
in at registration and the sizes reach the kernel as symbolic int32 arguments. A head size (N) picks
the kernel instance, so it must be a build-time constant (it is in every exported graph).

Every I/O is float32 (the ops are float32 in every exported graph). The class-based front also takes
float16 IO inputs; here that would need a dependent "FP32|FP16" type string, which stays out until a
GPU build can check it. tensorrt.plugin binds a node's inputs to the decorated functions' parameters
by position and reads their annotations as objects, so the functions are generated with the op's
input names (as torch-tensorrt generates its QDP plugins).

Not available in TensorRT-RTX (no `tensorrt.plugin`); `register()` raises ImportError there. Written
from the TensorRT docs: not run in this repository's CI (standard TensorRT is not installable here),
so the engine builder takes this front by default only for ops whose registry entry says so.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FunctionType
from typing import Any, List, Tuple, Union

from rwkv_export.kernels import launcher
from rwkv_export.ops.registry import OPS, PLUGIN_NAMESPACE, OpSpec

_registered_arch: str | None = None


def register(ptx_arch: str = "sm_75") -> None:
    """Define every op of the registry with `tensorrt.plugin` (register + autotune + aot_impl), once per process."""
    global _registered_arch
    if _registered_arch is not None:
        if _registered_arch != ptx_arch:
            raise RuntimeError(f"the rwkv:: AOT plugins are already registered for {_registered_arch}; one PTX arch per process")
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    if not hasattr(trt, "QuickPluginCreationRequest"):
        raise ImportError(f"TensorRT {trt.__version__} has no AOT plugins; need >= 10.9 (or build with --plugin python)")
    define(trtp, trt, ptx_arch)
    _registered_arch = ptx_arch


def define(trtp: Any, trt: Any, ptx_arch: str) -> None:
    """Register every op (descriptor, autotune, AOT implementation) with the decorator module `trtp`."""
    for spec in OPS.values():
        _define(trtp, trt, spec, ptx_arch)


def _function(name: str, params: tuple[str, ...], annotations: dict[str, Any], body: Callable[..., Any]) -> Any:
    """A function `name(*params)` calling `body` with them, with those parameter names and annotations."""
    code = compile(f"def {name}({', '.join(params)}):\n    return _body({', '.join(params)})\n", f"<rwkv {name}>", "exec")
    fn = FunctionType(code.co_consts[0], {"_body": body}, name)
    fn.__annotations__ = annotations
    return fn


def _define(trtp: Any, trt: Any, spec: OpSpec, ptx_arch: str) -> None:
    pid = f"{PLUGIN_NAMESPACE}::{spec.name}"
    names = tuple(spec.inputs)
    desc = dict.fromkeys(names, trtp.TensorDesc)
    outs: Any = Tuple[(trtp.TensorDesc,) * len(spec.outputs)]  # exact arity: trtp checks each element's class
    combination = ", ".join(["FP32"] * (len(names) + len(spec.outputs)))
    stem = spec.name.lower()

    def outputs(*inputs: Any) -> tuple[Any, ...]:
        # y like k (WKV4: its dtype too; WKV5/6/7: float32), the state outputs like the state inputs
        result = []
        for like, dtype_like in zip(spec.shape_like, spec.dtype_like):
            src = inputs[names.index(like)]
            result.append(src.like() if dtype_like == like else trtp.from_shape_expr(src.shape_expr, dtype=trt.float32))
        return tuple(result)

    def autotune(*args: Any) -> List[Any]:
        return [trtp.AutoTuneCombination(combination, "LINEAR")]

    def aot(*args: Any) -> Tuple[bytes, bytes, Any, Any]:
        return _launch(trtp, spec, args[names.index("k")], ptx_arch)

    trtp.register(pid)(_function(f"{stem}_desc", names, {**desc, "return": outs}, outputs))
    trtp.autotune(pid)(
        _function(f"{stem}_autotune", (*names, "outputs"), {**desc, "outputs": outs, "return": List[trtp.AutoTuneCombination]}, autotune)
    )
    aot_return = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]
    trtp.aot_impl(pid)(
        _function(f"{stem}_aot", (*names, "outputs", "tactic"), {**desc, "outputs": outs, "tactic": int, "return": aot_return}, aot)
    )


def _launch(trtp: Any, spec: OpSpec, k: Any, ptx_arch: str) -> Tuple[bytes, bytes, Any, Any]:
    """(entry, PTX, launch params, extra int32 args) for one node, from k's shape expressions: the
    geometry of the op's first launch form (launcher.plan_launch's), as expressions resolved at run time."""
    from rwkv_export.kernels import nvrtc

    size = dict(zip(spec.sizes, (k.shape_expr[i] for i in range(len(spec.sizes)))))
    n = 0
    if spec.kernel.head_sizes:
        if not size["N"].is_constant:
            raise ValueError(f"rwkv::{spec.name}: the head size (k's last dim) must be static to pick the kernel")
        n = int(size["N"].constant_value())
        if n not in spec.kernel.head_sizes:
            raise ValueError(
                f"rwkv::{spec.name} has no kernel for head size {n} (compiled: {spec.kernel.head_sizes}); build with --plugin none"
            )
    form = spec.kernel.launches[0]
    params = trtp.KernelLaunchParams()
    if form == "head":  # one block of N threads per (b, h)
        params.grid_x, params.block_x = size["B"] * size["H"], n
    else:  # one thread per (b, c)
        params.grid_x, params.block_x = trtp.cdiv(size["B"] * size["C"], launcher.THREADS_PER_BLOCK), launcher.THREADS_PER_BLOCK
    params.shared_mem = 0  # static shared memory only
    # Kernel parameters: the inputs, then these int32 scalars, then the outputs.
    scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(size[s]) for s in spec.kernel.launch_scalars(form)])
    entry = spec.kernel.entry.format(launch=form, n=n, io="f32")
    return entry.encode(), nvrtc.compile_ptx(ptx_arch, unit=spec.kernel.unit).encode(), params, scalars
