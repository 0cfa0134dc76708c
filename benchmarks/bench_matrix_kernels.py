"""Time the WKV5/6/7 CUDA kernels (plugins/wkv_matrix.cu) against a plain torch loop over T (the ops'
own torch definitions in custom_ops/, run on the GPU) and the card's memory bandwidth.

    python benchmarks/bench_matrix_kernels.py [--quick] [--io f32,f16] [--json out.json]

One row per (op, B x T x H x N, io): median kernel ms, tokens/s (B*T per second), GB/s moved
(inputs read, y written, state in/out), percent of peak, speed-up over the torch loop. The step
rows (T = 1) are what one decode token costs per layer; the long-T rows are prefill. Needs a CUDA
GPU; exits 2 without.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_kernels import run_cli, time_ms  # noqa: E402
from rwkv_export.ops import MATRIX_OPS  # noqa: E402
from rwkv_export.kernels.matrix_launcher import io_inputs, matrix_launch_raw, plan_matrix_launch  # noqa: E402
from tests._wkv_matrix_cases import make_case  # noqa: E402

# (B, T, H, N): 169M-like layer (768 = 12 x 64) prefill and decode; 1.5B-like (2048 = 32 x 64); a batch.
SHAPES = [(1, 1, 12, 64), (1, 512, 12, 64), (1, 4096, 12, 64), (1, 1, 32, 64), (1, 1024, 32, 64),
          (16, 1, 32, 64), (16, 512, 32, 64), (64, 1, 32, 64)]
QUICK = [(1, 1, 12, 64), (1, 512, 12, 64), (1, 1024, 32, 64), (16, 1, 32, 64), (16, 512, 32, 64)]
TORCH_LOOP_MAX_T = 1024  # the loop launches ~8 kernels a token: longer T only measures Python


def bench(shapes, ios, peak: float) -> list[dict]:
    rows = []
    stream, device = torch.cuda.current_stream().cuda_stream, torch.cuda.current_device()
    for op, module in MATRIX_OPS.items():
        for B, T, H, N in shapes:
            case = make_case(op, B, T, H, N, seed=0, state="warm")
            for io in ios:
                dt = torch.float16 if io == "f16" else torch.float32
                pos = io_inputs(op)
                ts = [torch.from_numpy(a).cuda().to(dt if i in pos else torch.float32) for i, a in enumerate(case.values())]
                y = torch.empty((B, T, H, N), device="cuda")
                state = torch.empty((B, H, N, N), device="cuda")
                ptrs, outs = [t.data_ptr() for t in ts], [y.data_ptr(), state.data_ptr()]
                ms = time_ms(lambda: matrix_launch_raw(op, ptrs, outs, B=B, T=T, H=H, N=N, io=io, stream=stream, device=device))
                torch_ms = None
                if T <= TORCH_LOOP_MAX_T:
                    f32 = [t.float() for t in ts]
                    torch_ms = time_ms(lambda: getattr(module, op.lower())(*f32), inner=1, min_total_ms=0.0, max_reps=3)
                moved = sum(t.numel() * t.element_size() for t in ts) + y.numel() * 4 + state.numel() * 4
                gbs = moved / ms / 1e6
                rows.append({
                    "op": op, "B": B, "T": T, "H": H, "N": N, "io": io, "entry": plan_matrix_launch(op, io, B, T, H, N).entry,
                    "ms": ms, "tok_s": B * T / ms * 1e3, "gb_s": gbs, "pct_peak": 100.0 * gbs / peak if peak == peak else None,
                    "torch_loop_ms": torch_ms, "vs_torch_loop": torch_ms / ms if torch_ms else None,
                })
                del ts, y, state
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict], peak: float, source: str) -> None:
    print(f"device: {torch.cuda.get_device_name()}  peak {peak:.0f} GB/s ({source})")
    print(f"{'op':>4} {'B x T x H x N':>16} {'io':>3} {'ms':>9} {'tok/s':>11} {'GB/s':>8} {'%peak':>6} {'torch ms':>9} {'x torch':>8}")
    for r in rows:
        fmt = lambda x, spec: format(x, spec) if x is not None else "-"  # noqa: E731
        shape = f"{r['B']}x{r['T']}x{r['H']}x{r['N']}"
        print(f"{r['op']:>4} {shape:>16} {r['io']:>3} {r['ms']:9.4f} {r['tok_s']:11.0f} {r['gb_s']:8.1f} "
              f"{fmt(r['pct_peak'], '6.1f'):>6} {fmt(r['torch_loop_ms'], '9.3f'):>9} {fmt(r['vs_torch_loop'], '8.1f'):>8}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, __doc__, "bench_matrix_kernels", bench, QUICK, SHAPES, print_table)


if __name__ == "__main__":
    sys.exit(main())
