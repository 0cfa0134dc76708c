"""`rwkv_export::wkv4`: WKV4 as a torch custom op, the project's CUDA kernels on GPU tensors.

    y, aa, bb, pp = torch.ops.rwkv_export.wkv4(time_decay, time_first, k, v, aa, bb, pp)

Same signature and meaning as custom_ops.wkv4.wkv4 (k, v [B, T, C] float32 or float16; state
[B, C] float32). CUDA tensors run plugins/launcher.py's kernels on torch's current stream; CPU
tensors run the torch reference in float32 (y cast back to k's dtype). A fake (meta) kernel gives
shapes to torch.compile / export. Importing this module registers the op; it imports no CUDA.
"""

from __future__ import annotations

import torch

from rwkv_export.ops.wkv4 import wkv4 as wkv4_reference

Tensor = torch.Tensor


@torch.library.custom_op("rwkv_export::wkv4", mutates_args=())
def wkv4(
    time_decay: Tensor, time_first: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference path (every device without its own kernel): float32 math, y in k's dtype."""
    B, T, C = k.shape
    if T == 0:  # custom ops may not return their inputs: copy the state through
        return k.new_empty((B, 0, C)), aa.float().clone(), bb.float().clone(), pp.float().clone()
    y, aa_out, bb_out, pp_out = wkv4_reference(
        time_decay.float(), time_first.float(), k.float(), v.float(), aa.float(), bb.float(), pp.float()
    )
    return y.to(k.dtype), aa_out, bb_out, pp_out


@wkv4.register_kernel("cuda")
def _wkv4_cuda(
    time_decay: Tensor, time_first: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from rwkv_export.kernels.launcher import wkv4_launch  # lazy: cuda-bindings is only needed on a GPU

    y, aa_out, bb_out, pp_out = wkv4_launch(time_decay, time_first, k, v, aa, bb, pp)
    return y, aa_out, bb_out, pp_out


@wkv4.register_fake
def _wkv4_fake(
    time_decay: Tensor, time_first: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    B, T, C = k.shape
    state = [k.new_empty((B, C), dtype=torch.float32) for _ in range(3)]  # [B, C]
    return k.new_empty((B, T, C)), state[0], state[1], state[2]


# --- WKV5 / WKV6 / WKV7 (plugins/wkv_matrix.cu) ---------------------------------------------------
# Same pattern: CUDA tensors run the matrix kernels (plugins/matrix_launcher.py), anything else the
# torch definition in custom_ops/ in float32; y and the state are float32 (the ops' contract).


def _matrix_reference(op: str, *tensors: Tensor) -> tuple[Tensor, Tensor]:
    from rwkv_export.ops import MATRIX_OPS

    fn = getattr(MATRIX_OPS[op], op.lower())  # custom_ops.wkvN.wkvN
    state = tensors[-1].float()
    if tensors[0].shape[1] == 0:
        return tensors[0].new_empty(tensors[0].shape, dtype=torch.float32), state.clone()
    y, s = fn(*tensors[:-1], state)
    return y.float(), s.float()


def _matrix_cuda(op: str, *tensors: Tensor) -> tuple[Tensor, Tensor]:
    from rwkv_export.kernels.matrix_launcher import matrix_launch  # lazy: cuda-bindings is only needed on a GPU

    y, state = matrix_launch(op, *tensors)
    return y, state


def _matrix_fake(*tensors: Tensor) -> tuple[Tensor, Tensor]:
    k = tensors[1]  # [B, T, H, N] (position 1 is k for WKV5/6 and w_raw for WKV7: same shape there)
    B, T, H, N = k.shape
    return k.new_empty((B, T, H, N), dtype=torch.float32), k.new_empty((B, H, N, N), dtype=torch.float32)


@torch.library.custom_op("rwkv_export::wkv5", mutates_args=())
def wkv5(r: Tensor, k: Tensor, v: Tensor, w_raw: Tensor, u: Tensor, state_in: Tensor) -> tuple[Tensor, Tensor]:
    return _matrix_reference("WKV5", r, k, v, w_raw, u, state_in)


@torch.library.custom_op("rwkv_export::wkv6", mutates_args=())
def wkv6(r: Tensor, k: Tensor, v: Tensor, w_raw: Tensor, u: Tensor, state_in: Tensor) -> tuple[Tensor, Tensor]:
    return _matrix_reference("WKV6", r, k, v, w_raw, u, state_in)


@torch.library.custom_op("rwkv_export::wkv7", mutates_args=())
def wkv7(r: Tensor, w_raw: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, state_in: Tensor) -> tuple[Tensor, Tensor]:
    return _matrix_reference("WKV7", r, w_raw, k, v, a, b, state_in)


for _op, _name in ((wkv5, "WKV5"), (wkv6, "WKV6"), (wkv7, "WKV7")):
    _op.register_kernel("cuda")(lambda *t, _n=_name: _matrix_cuda(_n, *t))
    _op.register_fake(_matrix_fake)

KERNEL_WKV = {"4": wkv4, "5.1": wkv5, "5.2": wkv5, "6": wkv6, "7": wkv7}


def use_kernels(model: torch.nn.Module) -> torch.nn.Module:
    """Route a reference model's WKV calls (`model.wkv`, the op's signature) through these custom ops:
    the project's CUDA kernels when the model's tensors are on a GPU. Returns the model."""
    version = model.config.version  # type: ignore[union-attr]
    if version not in KERNEL_WKV:
        raise ValueError(f"no WKV kernel op for RWKV-{version}")
    model.wkv = KERNEL_WKV[version]
    return model
