"""Time each ONNX function body of every WKV op (custom_ops/wkv*_onnx.py) in ORT CPU beside a numpy loop.

    python benchmarks/bench_onnx_bodies.py [--ops WKV4,WKV6] [--threads 1] [--repeat 15]
        [--shapes "1,1;1,64;1,512;8,512"] [--chunks chunked=4,gemm=8,16]

One row per (op, body, chunk L, B, T) for a 768-wide layer (WKV4: C = 768; WKV5/6/7: 12 heads of
64): the fastest of `--repeat` calls in ms (calls go round-robin across the bodies, so load from
other processes on a shared machine falls on all alike), its ratio to the op's numpy oracle run in
float32 and to the op's scan body, and the max error of y against the float64 oracle relative to
max(1, max |y|). WKV4's time_decay and time_first are initializers, as in an exported model (ORT
constant-folds the weight-only part of the body). The figures that chose each op's default body:
benchmarks/results/onnx-bodies.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rwkv_export.ops.onnx_function import wkv_model  # noqa: E402
from rwkv_export.ops.registry import OPS  # noqa: E402
from tests._wkv_cases import onnx_inputs, run_numpy  # noqa: E402

WIDTH = 768  # WKV4 channels; WKV5/6/7: HEADS x HEAD_SIZE
HEADS, HEAD_SIZE = 12, 64
WEIGHTS = {"WKV4": ("time_decay", "time_first")}  # inputs an exported model holds as initializers


def wkv4_feeds(B: int, T: int, C: int) -> dict[str, np.ndarray]:
    """Seeded WKV4 inputs shaped like a 169M layer mid-sequence (non-zero incoming state)."""
    rng = np.random.default_rng(0)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    bb = (1 + rng.random((B, C))).astype(np.float32)
    values = (normal(C) - 1, normal(C), 3 * normal(B, T, C), normal(B, T, C), normal(B, C), bb, normal(B, C))
    return dict(zip(OPS["WKV4"].inputs, values))


def feeds(op: str, B: int, T: int) -> dict[str, np.ndarray]:
    return wkv4_feeds(B, T, WIDTH) if op == "WKV4" else onnx_inputs(op, B, T, HEADS, HEAD_SIZE, seed=T)


def fastest_ms(fns: dict, repeat: int) -> dict[str, float]:
    """The fastest of `repeat` calls of each fn (round-robin), in ms, after one warm-up call each."""
    for fn in fns.values():
        fn()  # allocations, Scan/If subgraph set-up
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - t0) * 1e3)
    return best


def variants(op: str, chunks: dict[str, list[int]]) -> list[tuple[str, int | None]]:
    """(body, chunk) pairs of the op: every body, each chunked one at the asked (or default) lengths."""
    spec = OPS[op]
    return [(body, L) for body in spec.bodies for L in (chunks.get(body, [spec.chunks[body]]) if body in spec.chunks else [None])]


def bench_shape(op: str, B: int, T: int, chunks: dict[str, list[int]], so: ort.SessionOptions, repeat: int) -> None:
    x = feeds(op, B, T)
    weights = {n: x[n] for n in WEIGHTS.get(op, ())}
    activations = {n: a for n, a in x.items() if n not in weights}
    ref_y = run_numpy(op, x)[0]
    fns = {"numpy-f32": lambda: run_numpy(op, x, np.float32)}
    sessions = {}
    for body, L in variants(op, chunks):
        model = wkv_model(op, body=body, chunk=L, weights=weights).SerializeToString()
        sessions[body + ("" if L is None else f" L={L}")] = sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        fns[body + ("" if L is None else f" L={L}")] = lambda s=sess: s.run(None, activations)
    ms = fastest_ms(fns, repeat)
    for label, t in ms.items():
        y = sessions[label].run(None, activations)[0] if label in sessions else fns[label]()[0]
        err = float(np.abs(y - ref_y).max() / max(1.0, np.abs(ref_y).max()))
        print(f"{op:>5} {label:<12}{B:>3}{T:>6}{t:>10.3f}{t / ms['numpy-f32']:>9.2f}{t / ms['scan']:>8.2f}{err:>10.1e}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--shapes", default="1,1;1,64;1,512;1,1024;8,512", help="B,T;B,T...")
    ap.add_argument("--chunks", default="chunked=4;gemm=8,16", help="body=L,L;body=L (default: each body's registry chunk)")
    args = ap.parse_args(argv)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    chunks = {b: [int(v) for v in ls.split(",")] for b, ls in (item.split("=") for item in args.chunks.split(";") if item)}
    print(
        f"ORT {ort.__version__} CPU, intra_op_num_threads={args.threads}, fastest of {args.repeat}; "
        f"WKV4 C = {WIDTH}, WKV5/6/7 H = {HEADS}, N = {HEAD_SIZE}"
    )
    print(f"{'op':>5} {'body':<12}{'B':>3}{'T':>6}{'ms':>10}{'/numpy':>9}{'/scan':>8}{'y err':>10}")
    for op in args.ops.split(","):
        for B, T in (tuple(map(int, s.split(","))) for s in args.shapes.split(";")):
            bench_shape(op, B, T, chunks, so, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
