"""`rwkv_export::wkv4` .. `rwkv_export::wkv7`: every WKV op of the registry as a torch custom op.

    y, aa, bb, pp = torch.ops.rwkv_export.wkv4(time_decay, time_first, k, v, aa, bb, pp)
    y, state_out = torch.ops.rwkv_export.wkv6(r, k, v, w_raw, u, state_in)

Same signature and meaning as the op's torch definition (custom_ops/wkvN.py, the registry's
`reference`). CUDA tensors run the project's kernels (plugins/launcher.py) on torch's current
stream; tensors on any other device run the torch reference in float32. Outputs follow the
registry: shaped by `dims`, in k's dtype where `dtype_like` names an IO input (WKV4's y), else
float32. A fake (meta) kernel gives shapes to torch.compile / export. Importing this module
registers the ops; it imports no CUDA.
"""

from __future__ import annotations

import torch

from rwkv_export.ops.registry import OPS, OpSpec

Tensor = torch.Tensor


def _output_like(spec: OpSpec, tensors: tuple[Tensor, ...]) -> list[Tensor]:
    """Empty outputs of the registry's shapes and dtypes for these inputs."""
    named = dict(zip(spec.inputs, tensors))
    k = named["k"]
    size = dict(zip(spec.sizes, k.shape))
    return [k.new_empty(tuple(size[d] for d in spec.dims[name]), dtype=k.dtype if like in spec.kernel.io_inputs else torch.float32)
            for name, like in zip(spec.outputs, spec.dtype_like)]  # fmt: skip


def _reference(spec: OpSpec, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Every device without its own kernel: the op's torch definition in float32."""
    empty = _output_like(spec, tensors)
    if tensors[spec.inputs.index("k")].shape[1] == 0:  # custom ops may not return their inputs: copy the state
        for state_in, state_out in spec.state:
            empty[spec.outputs.index(state_out)] = tensors[spec.inputs.index(state_in)].float().clone()
        return tuple(empty)
    outs = spec.reference(*(t.float() for t in tensors))
    return tuple(o.to(e.dtype) for o, e in zip(outs, empty))


def _cuda(spec: OpSpec, *tensors: Tensor) -> tuple[Tensor, ...]:
    from rwkv_export.kernels.launcher import launch_tensors  # lazy: cuda-bindings is only needed on a GPU

    return launch_tensors(spec.name, *tensors)


def _schema(spec: OpSpec) -> str:
    return f"({', '.join(f'Tensor {n}' for n in spec.inputs)}) -> ({', '.join(['Tensor'] * len(spec.outputs))})"


def _register(spec: OpSpec):  # type: ignore[no-untyped-def]
    op = torch.library.custom_op(
        f"rwkv_export::{spec.name.lower()}", lambda *t: _reference(spec, *t), mutates_args=(), schema=_schema(spec)
    )
    op.register_kernel("cuda")(lambda *t: _cuda(spec, *t))
    op.register_fake(lambda *t: tuple(_output_like(spec, t)))
    return op


KERNEL_OPS = {name: _register(spec) for name, spec in OPS.items()}  # op name -> its torch custom op


def use_kernels(model: torch.nn.Module) -> torch.nn.Module:
    """Route a reference model's WKV calls (`model.wkv`, the op's signature) through these custom ops
    (the version registry names the model's op): the project's CUDA kernels when the model's tensors
    are on a GPU. Returns the model."""
    from rwkv_export.versions import version_info

    op = version_info(model.config.version).op  # type: ignore[union-attr]
    if op not in KERNEL_OPS:
        raise ValueError(f"no WKV kernel op for RWKV-{model.config.version} ({op})")  # type: ignore[union-attr]
    model.wkv = KERNEL_OPS[op]
    return model
