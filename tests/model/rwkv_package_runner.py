"""Run the `rwkv` PyPI package (RWKV-5/6/7) in a process of its own; used by test_model_trained.py.

The package picks its code paths from environment variables read at import time (RWKV_V7_ON selects
RWKV-7 and replaces RWKV-4..6), so each version family needs a fresh interpreter:

    RWKV_V7_ON=0|1 python tests/model/rwkv_package_runner.py JOBS.json

JOBS.json: [{"pth": "m.pth", "seqs": [[token, ...], ...], "out": "r.npz"}, ...]. For each job, each
sequence runs from a fresh state with strategy 'cpu fp32'; out holds logits_<i> [V] and the state
as x_att_<i> [L, C], wkv_<i> [L, H, N, N] (the package's layout), x_ffn_<i> [L, C].
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

import numpy as np

os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")


def main(jobs_file: str) -> None:
    from rwkv.model import RWKV

    for job in json.loads(open(jobs_file).read()):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every tensor
            model = RWKV(model=job["pth"][: -len(".pth")], strategy="cpu fp32")
        out: dict[str, np.ndarray] = {}
        for i, seq in enumerate(job["seqs"]):
            with contextlib.redirect_stdout(io.StringIO()):
                logits, state = model.forward(list(seq), None)
            n_layer = len(state) // 3
            for f, name in enumerate(("x_att", "wkv", "x_ffn")):
                out[f"{name}_{i}"] = np.stack([state[layer * 3 + f].float().numpy() for layer in range(n_layer)])
            out[f"logits_{i}"] = logits.float().numpy()
        np.savez(job["out"], **out)


if __name__ == "__main__":
    main(sys.argv[1])
