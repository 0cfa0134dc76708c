"""Time each ONNX form of rwkv::WKV5/6/7 (custom_ops/wkv_matrix_onnx.py) in ORT CPU beside a numpy loop.

    python benchmarks/bench_matrix_forms.py [--threads 1] [--repeat 7] [--seqs 1,16,64,512] [--ops WKV5,WKV6,WKV7]

One row per (op, form, T) for a 169M-like layer (B = 1, 12 heads of 64): the fastest of `--repeat`
calls in ms, its ratio to the float32 numpy loop of custom_ops/ and to the op's scan form, and
the max error of y against the float64 oracle relative to max |y|.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rwkv_export.ops.wkv_matrix_onnx import CHUNKED_OPS, random_inputs, wkv_matrix_model  # noqa: E402
from tests._wkv_matrix_cases import run_numpy  # noqa: E402


def fastest(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seqs", default="1,16,64,512")
    parser.add_argument("--ops", default="WKV5,WKV6,WKV7")
    args = parser.parse_args(argv)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = args.threads
    print(f"ORT {ort.__version__} CPU, {args.threads} thread(s); B = 1, H = 12, N = 64; fastest of {args.repeat}")
    print(f"{'op':>5} {'form':>8} {'T':>5} {'ms':>9} {'x numpy':>8} {'x scan':>7} {'y err':>9}")
    for op in args.ops.split(","):
        for T in map(int, args.seqs.split(",")):
            feeds = random_inputs(op, 1, T, 12, 64, seed=T)
            ref_y, _ = run_numpy(op, feeds)
            numpy_ms = fastest(lambda: run_numpy(op, feeds, np.float32), max(1, args.repeat // 3))
            scan_ms = None
            for form in ("scan", "chunked") if op in CHUNKED_OPS else ("scan",):
                sess = ort.InferenceSession(wkv_matrix_model(op, form=form).SerializeToString(), opts, providers=["CPUExecutionProvider"])
                ms = fastest(lambda: sess.run(None, feeds), args.repeat)
                y = sess.run(None, feeds)[0]
                err = float(np.abs(y - ref_y).max() / max(1.0, np.abs(ref_y).max()))
                scan_ms = scan_ms or ms
                print(f"{op:>5} {form:>8} {T:>5} {ms:9.3f} {numpy_ms / ms:8.2f} {scan_ms / ms:7.2f} {err:9.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
