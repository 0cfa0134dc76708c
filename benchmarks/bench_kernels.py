"""Time the WKV4 CUDA kernels (plugins/wkv4.cu) per form, against the card's memory bandwidth,
the one-thread-per-channel baseline (form 'seq', RWKV-LM's wkv_cuda layout) and a plain torch
loop over T (custom_ops.wkv4.wkv4 on the GPU).

    python benchmarks/bench_kernels.py [--quick] [--io f32,f16] [--json out.json] [--peak-gbs 3350]

One row per (B x T x C, io, form): median ms, GB/s moved (k, v read, y written, state in/out),
percent of peak, speed-up over 'seq' and over the torch loop. Needs a CUDA GPU; exits 2 without.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rwkv_export.ops.wkv4 import wkv4 as wkv4_torch  # noqa: E402
from rwkv_export.kernels.launcher import _module_for, plan_launch, wkv4_launch_raw  # noqa: E402

SHAPES = [(1, 512, 768), (1, 4096, 768), (1, 4096, 2560), (8, 1024, 2048), (16, 4096, 4096), (64, 4096, 4096)]
QUICK = [(1, 512, 768), (1, 4096, 768), (1, 4096, 2560), (8, 1024, 2048), (64, 4096, 4096)]
FORMS = ("seq", "seq4", "chunked", "auto")
# Peak DRAM bandwidth (GB/s) by device-name fragment, for when the driver does not report it.
PEAK_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0, "A100": 1555.0, "L40S": 864.0, "A10": 600.0}
TORCH_LOOP_MAX = 1 * 4096 * 4096  # B*T*C above which the torch loop (T launches x ~15 ops) is skipped


def peak_bandwidth(override: float | None) -> tuple[float, str]:
    """(GB/s, where the figure came from)."""
    if override:
        return override, "--peak-gbs"
    try:
        from cuda.bindings import driver

        _module_for(torch.cuda.current_device())
        attr = driver.CUdevice_attribute
        _, dev = driver.cuDeviceGet(torch.cuda.current_device())
        err1, clock_khz = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, dev)
        err2, bus_bits = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, dev)
        if err1 == err2 == driver.CUresult.CUDA_SUCCESS and clock_khz and bus_bits:
            return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "driver (2 x memory clock x bus width)"
    except Exception:  # attributes deprecated or absent: fall back to the table
        pass
    name = torch.cuda.get_device_name()
    for fragment, gbs in PEAK_GBS.items():
        if fragment in name:
            return gbs, f"table ({fragment})"
    return float("nan"), "unknown (pass --peak-gbs)"


def inputs(B: int, T: int, C: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"
    td = torch.empty(C, device=dev).uniform_(-5, 1.5, generator=g)           # [C]
    tf = torch.randn(C, device=dev, generator=g)                             # [C]
    k = torch.randn(B, T, C, device=dev, generator=g).to(dtype)              # [B, T, C]
    v = torch.randn(B, T, C, device=dev, generator=g).to(dtype)              # [B, T, C]
    aa = torch.randn(B, C, device=dev, generator=g)                          # [B, C]
    bb = torch.rand(B, C, device=dev, generator=g) + 0.5
    pp = torch.randn(B, C, device=dev, generator=g) * 5
    return td, tf, k, v, aa, bb, pp


def time_ms(fn: Callable[[], object], inner: int = 10, min_total_ms: float = 50.0, max_reps: int = 30) -> float:
    """Median per-call ms from CUDA events around `inner` back-to-back calls (so Python's launch
    overhead overlaps GPU work), after one warm-up, until min_total_ms or max_reps."""
    fn()
    torch.cuda.synchronize()
    times: list[float] = []
    while not times or (len(times) < max_reps and sum(times) * inner < min_total_ms):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def bench(shapes: Sequence[tuple[int, int, int]], ios: Sequence[str], peak: float) -> list[dict]:
    rows = []
    for B, T, C in shapes:
        for io in ios:
            dtype = torch.float32 if io == "f32" else torch.float16
            args = inputs(B, T, C, dtype)
            moved = 3 * B * T * C * args[2].element_size() + 6 * B * C * 4 + 2 * C * 4  # bytes
            base_ms = None
            torch_ms = None
            if B * T * C <= TORCH_LOOP_MAX:
                f32 = [a.float() for a in args]
                torch_ms = time_ms(lambda: wkv4_torch(*f32), inner=1, min_total_ms=0.0, max_reps=1)
            y = torch.empty_like(args[2])                                            # [B, T, C]
            outs = [torch.empty(B, C, device="cuda") for _ in range(3)]             # [B, C]
            ptrs = [t.data_ptr() for t in (*args, y, *outs)]
            stream, device = torch.cuda.current_stream().cuda_stream, torch.cuda.current_device()
            for form in FORMS:
                ms = time_ms(lambda: wkv4_launch_raw(*ptrs, B=B, T=T, C=C, io=io, form=form, stream=stream, device=device))
                if form == "seq":
                    base_ms = ms
                launch = plan_launch(form, io, B, T, C, sm_count=_module_for(torch.cuda.current_device()).sm_count)
                gbs = moved / ms / 1e6
                rows.append({
                    "B": B, "T": T, "C": C, "io": io, "form": form, "entry": launch.entry,
                    "grid": launch.grid, "block": launch.block, "ms": ms, "gb_s": gbs,
                    "pct_peak": 100.0 * gbs / peak if peak == peak else None,
                    "vs_seq": base_ms / ms if base_ms else None,
                    "vs_torch_loop": torch_ms / ms if torch_ms else None, "torch_loop_ms": torch_ms,
                })
            del args, y, outs
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict], peak: float, source: str) -> None:
    print(f"device: {torch.cuda.get_device_name()}  peak {peak:.0f} GB/s ({source})")
    print(f"{'B x T x C':>18} {'io':>3} {'form':>8} {'block':>12} {'ms':>9} {'GB/s':>8} {'%peak':>6} {'x seq':>6} {'x torch':>8}")
    for r in rows:
        fmt = lambda x, spec: format(x, spec) if x is not None else "-"  # noqa: E731
        shape = f"{r['B']}x{r['T']}x{r['C']}"
        block = "x".join(map(str, r["block"][:2]))
        print(f"{shape:>18} {r['io']:>3} {r['form']:>8} {block:>12} {r['ms']:9.3f} {r['gb_s']:8.1f} "
              f"{fmt(r['pct_peak'], '6.1f'):>6} {fmt(r['vs_seq'], '6.2f'):>6} {fmt(r['vs_torch_loop'], '8.1f'):>8}")


def run_cli(argv: list[str] | None, doc: str, name: str, bench_fn: Callable[..., list[dict]], quick: Sequence, full: Sequence,
            print_fn: Callable[[list[dict], float, str], None]) -> int:
    """The command line both kernel benchmarks share: --quick, --io, --json, --peak-gbs."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes (for scripts/gpu_check.sh)")
    parser.add_argument("--io", default="f32,f16", help="comma-separated I/O dtypes: f32, f16")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--peak-gbs", type=float, help="card's DRAM bandwidth, if the driver does not say")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"{name}: no CUDA GPU visible to torch; nothing to time", file=sys.stderr)
        return 2
    peak, source = peak_bandwidth(args.peak_gbs)
    rows = bench_fn(quick if args.quick else full, args.io.split(","), peak)
    print_fn(rows, peak, source)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "peak_gb_s": peak, "rows": rows}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, __doc__, "bench_kernels", bench, QUICK, SHAPES, print_table)


if __name__ == "__main__":
    sys.exit(main())
