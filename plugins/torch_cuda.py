"""`rwkv_export::wkv4`: WKV4 as a torch custom op, the project's CUDA kernels on GPU tensors.

    y, aa, bb, pp = torch.ops.rwkv_export.wkv4(time_decay, time_first, k, v, aa, bb, pp)

Same signature and meaning as custom_ops.wkv4.wkv4 (k, v [B, T, C] float32 or float16; state
[B, C] float32). CUDA tensors run plugins/launcher.py's kernels on torch's current stream; CPU
tensors run the torch reference in float32 (y cast back to k's dtype). A fake (meta) kernel gives
shapes to torch.compile / export. Importing this module registers the op; it imports no CUDA.
"""

from __future__ import annotations

import torch

from custom_ops.wkv4 import wkv4 as wkv4_reference

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
    from plugins.launcher import wkv4_launch  # lazy: cuda-bindings is only needed on a GPU

    y, aa_out, bb_out, pp_out = wkv4_launch(time_decay, time_first, k, v, aa, bb, pp)
    return y, aa_out, bb_out, pp_out


@wkv4.register_fake
def _wkv4_fake(
    time_decay: Tensor, time_first: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    B, T, C = k.shape
    state = [k.new_empty((B, C), dtype=torch.float32) for _ in range(3)]  # [B, C]
    return k.new_empty((B, T, C)), state[0], state[1], state[2]
