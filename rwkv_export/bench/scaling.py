"""`bench --scaling`: ONNX Runtime prefill time and peak memory as the prompt grows.

Two ways to prefill T tokens with the float32 export:
    whole     one prefill call on [1, T]: activations grow with T (B x T x F floats in the FFN)
    chunked   T / chunk prefill calls of [1, chunk], the state carried between them: the same
              result (prefill(T1) then prefill(T2) == prefill(T1 + T2)), bounded activations
RWKV's promise is linear time and flat memory; the chunked column shows it, the whole column shows
what a single call costs. Any RWKV version (only the export and its manifest are read). Every point runs in a fresh process so its peak resident set (VmHWM) is
its own; the time is the median of up to 3 calls after one warm-up on the chunk length.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from rwkv_export.bench.child import model_summary, run_child
from rwkv_export.bench.stats import summarize
from rwkv_export.bench.workspace import Workspace
from rwkv_export.checkpoint import ModelConfig

DEFAULT_SEQ = [128, 256, 512, 1024, 2048, 4096, 8192]
MODES = ("whole", "chunked")
MAX_REPS = 3  # the 8192-token points are long; three calls give a median without doubling the run


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One (mode, T) point, inside its own process."""
    import numpy as np

    from rwkv_export.bench.memory import _peak_mb, _rss_mb
    from rwkv_export.runtime import ExportedModel

    model = ExportedModel(Workspace.from_dict(spec["workspace"]).onnx_dir("float32"), "cpu", spec["threads"]).__enter__()
    seq, chunk = spec["seq"], spec["chunk"] if spec["mode"] == "chunked" else spec["seq"]
    tokens = np.random.default_rng(0).integers(0, spec["vocab"], (1, seq))
    model.prefill(tokens[:, : min(chunk, seq)])  # warm-up: sessions' first-run allocations
    loaded = _rss_mb()

    def prefill() -> None:
        state = model.initial_state(1)
        for start in range(0, seq, chunk):
            _, state = model.prefill(tokens[:, start : start + chunk], state)

    times = []
    for _ in range(spec["reps"]):
        t0 = time.perf_counter()
        prefill()
        times.append(time.perf_counter() - t0)
    return {"seconds": summarize(times).to_dict(), "loaded_mb": loaded, "peak_mb": _peak_mb()}


def run(
    ws: Workspace,
    config: ModelConfig,
    seqs: list[int],
    chunk: int,
    threads: int,
    reps: int,
    progress: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    points = []
    for seq in sorted(seqs):
        for mode in MODES:
            progress(f"scaling: {mode} prefill of {seq} tokens (fresh process)")
            spec = {
                "workspace": ws.to_dict(),
                "threads": threads,
                "vocab": config.vocab_size,
                "seq": seq,
                "chunk": chunk,
                "mode": mode,
                "reps": max(1, min(reps, MAX_REPS)),
            }
            ok, point = run_child("rwkv_export.bench.scaling", spec)
            if ok:
                point["ms_per_token"] = 1e3 * point["seconds"]["median"] / seq
            points.append({"seq": seq, "mode": mode, **point})
    return {
        "kind": "scaling",
        "model": model_summary(ws, config),
        "chunk": chunk,
        "threads": threads,
        "points": points,
    }


def format_table(result: dict[str, Any]) -> str:
    m = result["model"]
    out = [
        f"Prefill scaling, ONNX Runtime float32, RWKV-{m.get('version', '4')} {m['n_layer']} x {m['n_embd']} (vocab {m['vocab_size']}), "
        f"{result['threads']} threads; chunked = calls of {result['chunk']} tokens carrying the state",
        f"  {'T':>6} | {'whole s':>8} {'ms/tok':>7} {'peak MB':>8} | {'chunked s':>9} {'ms/tok':>7} {'peak MB':>8}",
    ]
    by = {(p["seq"], p["mode"]): p for p in result["points"]}
    for seq in sorted({p["seq"] for p in result["points"]}):
        cols = []
        for mode in MODES:
            p = by[(seq, mode)]
            if "error" in p:
                cols.append(f"{'error: ' + p['error'][:40]:>26}")
            else:
                width = 8 if mode == "whole" else 9
                cols.append(f"{p['seconds']['median']:{width}.3f} {p['ms_per_token']:7.2f} {p['peak_mb']:8.0f}")
        out.append(f"  {seq:>6} | " + " | ".join(cols))
    out.append("Linear time: ms/tok stays level as T grows. Flat memory: the chunked peak stays level.")
    return "\n".join(out)


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        pts = [p for p in result["points"] if p["mode"] == mode and "error" not in p]
        ax_t.plot([p["seq"] for p in pts], [p["seconds"]["median"] for p in pts], "o-", label=mode)
        ax_m.plot([p["seq"] for p in pts], [p["peak_mb"] for p in pts], "o-", label=mode)
    for ax, ylabel in ((ax_t, "prefill time (s)"), (ax_m, "peak resident memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens T")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_t.set_yscale("log")
    ax_m.set_ylim(bottom=0)  # from zero: a flat line must look flat, not magnified noise
    fig.suptitle("RWKV prefill in ONNX Runtime: time and memory vs prompt length")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
