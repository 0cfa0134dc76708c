"""Independent implementations from PyPI, wrapped to a common (logits, state) form.

- the `rwkv` package (ChatRWKV's model), strategy 'cpu fp32', fed a BlinkDL .pth;
- transformers' RwkvForCausalLM, fed a Hugging Face directory.
Both return logits [V] (or [B, V]) for the last token and the state as our five [L, B, C] tensors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

# The rwkv package reads these at import time: plain eager torch, no CUDA build.
os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")


def rwkv_package(pth: Path, tokens: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run the `rwkv` package on one sequence; state as [x_att, aa, bb, pp, x_ffn], each [L, C]."""
    import contextlib
    import io

    from rwkv.model import RWKV

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a table of every tensor
        model = RWKV(model=str(pth.with_suffix("")), strategy="cpu fp32")
    logits, state = model.forward(tokens, None)
    n_layer = len(state) // 5
    fields = [np.stack([state[i * 5 + f].float().numpy() for i in range(n_layer)]) for f in range(5)]
    return logits.float().numpy(), fields


def transformers_model(hf_dir: Path, tokens: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run RwkvForCausalLM on tokens [B, T]; logits of the last token [B, V], state fields [L, B, C]."""
    from transformers import RwkvForCausalLM

    model = RwkvForCausalLM.from_pretrained(str(hf_dir), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=tokens, use_cache=True)
    # transformers keeps state as 5 tensors [B, C, L]: ffn shift, att shift, num, den, max
    ffn, att, num, den, mx = (s.permute(2, 0, 1).float().numpy() for s in out.state)
    fields = [att, num, den, mx, ffn]
    return out.logits[:, -1].float().numpy(), fields
