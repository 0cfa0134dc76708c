"""Time each ONNX form of rwkv::WKV4 (custom_ops/wkv4_onnx.py) in ORT CPU beside a numpy loop.

    python benchmarks/bench_wkv_forms.py [--threads 2] [--repeat 20] [--chunks 4] [--gemm-chunks 8,16]
        [--shapes "1,512,768;8,512,768"]

Prints one row per (form, B, T, C): the fastest of `--repeat` calls in ms and its ratio to the
numpy loop (the reference `wkv4_numpy` run in float32) and to the scan form. time_decay and
time_first are initializers, as in an exported model (ORT constant-folds the weight-only part).
The figures picked `DEFAULT_FORM`; they are recorded in wkv4_onnx.py's docstring.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rwkv_export.ops.wkv4 import INPUTS, wkv4_numpy  # noqa: E402
from rwkv_export.ops.wkv4_onnx import wkv4_model  # noqa: E402

SHAPES = [(1, 1, 768), (1, 64, 768), (1, 512, 768), (1, 1024, 768), (8, 512, 768)]


def feeds(B: int, T: int, C: int) -> dict[str, np.ndarray]:
    """Seeded inputs shaped like a 169M layer mid-sequence (non-zero incoming state)."""
    rng = np.random.default_rng(0)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    bb = (1 + rng.random((B, C))).astype(np.float32)
    values = (normal(C) - 1, normal(C), 3 * normal(B, T, C), normal(B, T, C), normal(B, C), bb, normal(B, C))
    return dict(zip(INPUTS, values))


def fastest_ms(fns: dict, repeat: int) -> dict[str, float]:
    """The fastest of `repeat` calls of each fn, in ms. Calls go round-robin across the fns so
    that load from other processes on a shared machine falls on all of them alike."""
    for fn in fns.values():
        fn()  # warm-up: allocations, Scan/If subgraph set-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - t0) * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--chunks", default="4", help="chunk lengths L of the chunked form")
    ap.add_argument("--gemm-chunks", default="8,16", help="chunk lengths L of the gemm form")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--shapes", default="", help="B,T,C;B,T,C... (default: the five of SHAPES)")
    args = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    variants: list[tuple[str, dict[str, int]]] = [("scan", {})]
    variants += [("chunked", {"chunk": int(c)}) for c in args.chunks.split(",")]
    variants += [("gemm", {"chunk": int(c)}) for c in args.gemm_chunks.split(",")]
    print(f"ORT {ort.__version__} CPU, intra_op_num_threads={args.threads}, fastest of {args.repeat}")
    print(f"{'form':<16}{'B':>3}{'T':>6}{'C':>5}{'ms':>10}{'/numpy':>9}{'/scan':>8}")
    shapes = [tuple(map(int, x.split(","))) for x in args.shapes.split(";")] if args.shapes else SHAPES
    for B, T, C in shapes:
        x = feeds(B, T, C)
        weights = (x["time_decay"], x["time_first"])  # initializers, as in an exported model
        activations = {n: a for n, a in x.items() if n not in ("time_decay", "time_first")}
        fns = {"numpy-f32-loop": lambda: wkv4_numpy(**x, dtype=np.float32)}
        for form, opts in variants:
            model = wkv4_model(args.opset, form, weights=weights, **opts).SerializeToString()
            sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            fns[form + "".join(f" L={v}" for v in opts.values())] = lambda s=sess: s.run(None, activations)
        ms = fastest_ms(fns, args.repeat)
        for label, t in ms.items():
            print(f"{label:<16}{B:>3}{T:>6}{C:>5}{t:>10.3f}{t / ms['numpy-f32-loop']:>9.2f}{t / ms['scan']:>8.2f}")


if __name__ == "__main__":
    main()
