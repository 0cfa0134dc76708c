"""Time the WKV CUDA kernels of every op of the registry (plugins/wkv4.cu, plugins/wkv_heads.cu) per
launch form, against the card's memory bandwidth, the op's first launch form (WKV4's 'seq': one
thread per channel, RWKV-LM's wkv_cuda layout) and a plain torch loop over T (the op's own torch
definition, custom_ops/wkvN.py, run on the GPU).

    python benchmarks/bench_kernels.py [--quick] [--ops WKV4,WKV6] [--io f32,f16] [--json out.json] [--peak-gbs 3350]

One row per (op, sizes, io, launch form): median ms, tokens/s (B*T per second), GB/s moved (inputs
read, outputs written), percent of peak, speed-up over the first launch form and over the torch loop.
WKV5/6/7 rows with T = 1 are what one decode token costs per layer; the long-T rows are prefill.
Needs a CUDA GPU; exits 2 without.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rwkv_export.kernels.cuda_driver import module_for  # noqa: E402
from rwkv_export.kernels.launcher import launch_raw, plan_launch  # noqa: E402
from rwkv_export.ops.registry import OPS, OpSpec  # noqa: E402
from tests._wkv_cases import make_case  # noqa: E402

# Sizes per layout of the op's sizes: (B, T, C) for per-channel ops, (B, T, H, N) for per-head ones
# (169M-like layer 768 = 12 x 64 prefill and decode; 1.5B-like 2048 = 32 x 64; a batch).
SHAPES = {
    ("B", "T", "C"): [(1, 512, 768), (1, 4096, 768), (1, 4096, 2560), (8, 1024, 2048), (16, 4096, 4096), (64, 4096, 4096)],
    ("B", "T", "H", "N"): [
        (1, 1, 12, 64),
        (1, 512, 12, 64),
        (1, 4096, 12, 64),
        (1, 1, 32, 64),
        (1, 1024, 32, 64),
        (16, 1, 32, 64),
        (16, 512, 32, 64),
        (64, 1, 32, 64),
    ],
}
QUICK = {
    ("B", "T", "C"): [(1, 512, 768), (1, 4096, 768), (1, 4096, 2560), (8, 1024, 2048), (64, 4096, 4096)],
    ("B", "T", "H", "N"): [(1, 1, 12, 64), (1, 512, 12, 64), (1, 1024, 32, 64), (16, 1, 32, 64), (16, 512, 32, 64)],
}
# Peak DRAM bandwidth (GB/s) by device-name fragment, for when the driver does not report it.
PEAK_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0, "A100": 1555.0, "L40S": 864.0, "A10": 600.0}
TORCH_LOOP_MAX = 1 * 4096 * 4096  # per-channel ops: B*T*C above which the torch loop is skipped
TORCH_LOOP_MAX_T = 1024  # per-head ops: T above which it only measures Python


def peak_bandwidth(override: float | None) -> tuple[float, str]:
    """(GB/s, where the figure came from)."""
    if override:
        return override, "--peak-gbs"
    try:
        from cuda.bindings import driver

        module_for(torch.cuda.current_device(), "wkv4")  # initialises the driver in torch's context
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


def _wkv4_inputs(B: int, T: int, C: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Drawn on the GPU: the large per-channel shapes would take numpy minutes."""
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"
    td = torch.empty(C, device=dev).uniform_(-5, 1.5, generator=g)  # [C]
    tf = torch.randn(C, device=dev, generator=g)  # [C]
    k = torch.randn(B, T, C, device=dev, generator=g).to(dtype)  # [B, T, C]
    v = torch.randn(B, T, C, device=dev, generator=g).to(dtype)  # [B, T, C]
    aa = torch.randn(B, C, device=dev, generator=g)  # [B, C]
    bb = torch.rand(B, C, device=dev, generator=g) + 0.5
    pp = torch.randn(B, C, device=dev, generator=g) * 5
    return [td, tf, k, v, aa, bb, pp]


def inputs(spec: OpSpec, sizes: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    """CUDA inputs of the op in its order, the IO inputs in `dtype`, the rest float32."""
    if spec.name == "WKV4":
        return _wkv4_inputs(*sizes, dtype)
    case = make_case(spec.name, sizes, seed=0, state="warm")
    return [torch.from_numpy(a).cuda().to(dtype if n in spec.kernel.io_inputs else torch.float32) for n, a in case.items()]


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


def _torch_loop_ms(spec: OpSpec, ts: list[torch.Tensor], size: dict[str, int]) -> float | None:
    """The torch loop launches ~10 kernels a token: skipped where it would take minutes (per-channel
    ops past B*T*C = 4096^2; one run) or only measure Python (per-head ops past T = 1024; best of 3)."""
    per_head = bool(spec.kernel.head_sizes)
    if size["T"] > TORCH_LOOP_MAX_T if per_head else size["B"] * size["T"] * size["C"] > TORCH_LOOP_MAX:
        return None
    f32 = [t.float() for t in ts]
    return time_ms(lambda: spec.reference(*f32), inner=1, min_total_ms=0.0, max_reps=3 if per_head else 1)


def bench(ops: Sequence[str], shapes: dict, ios: Sequence[str], peak: float) -> list[dict]:
    rows = []
    stream, device = torch.cuda.current_stream().cuda_stream, torch.cuda.current_device()
    for op in ops:
        spec = OPS[op]
        sm_count = module_for(device, spec.kernel.unit).sm_count
        launches = [f for f in spec.kernel.launches if f != "step"] + (["auto"] if len(spec.kernel.launches) > 1 else [])
        for sizes in shapes[spec.sizes]:
            size = dict(zip(spec.sizes, sizes))
            for io in ios:
                ts = inputs(spec, sizes, torch.float32 if io == "f32" else torch.float16)
                outs = [torch.empty(tuple(size[d] for d in spec.dims[n]), device="cuda",
                                    dtype=ts[spec.inputs.index("k")].dtype if like in spec.kernel.io_inputs else torch.float32)
                        for n, like in zip(spec.outputs, spec.dtype_like)]  # fmt: skip
                moved = sum(t.numel() * t.element_size() for t in (*ts, *outs))  # bytes
                ptrs, out_ptrs = [t.data_ptr() for t in ts], [t.data_ptr() for t in outs]
                torch_ms, base_ms = _torch_loop_ms(spec, ts, size), None
                for form in launches:
                    ms = time_ms(lambda: launch_raw(op, ptrs, out_ptrs, sizes, io=io, launch=form, stream=stream, device=device))
                    base_ms = base_ms or ms
                    launch = plan_launch(op, form, io, sizes, sm_count=sm_count)
                    gbs = moved / ms / 1e6
                    rows.append(
                        {
                            "op": op,
                            "sizes": dict(size),
                            "io": io,
                            "launch": form,
                            "entry": launch.entry,
                            "grid": launch.grid,
                            "block": launch.block,
                            "ms": ms,
                            "tok_s": size["B"] * size["T"] / ms * 1e3,
                            "gb_s": gbs,
                            "pct_peak": 100.0 * gbs / peak if peak == peak else None,
                            "vs_first": base_ms / ms,
                            "torch_loop_ms": torch_ms,
                            "vs_torch_loop": torch_ms / ms if torch_ms else None,
                        }
                    )
                del ts, outs
                torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict], peak: float, source: str) -> None:
    print(f"device: {torch.cuda.get_device_name()}  peak {peak:.0f} GB/s ({source})")
    print(
        f"{'op':>4} {'sizes':>16} {'io':>3} {'launch':>8} {'block':>10} {'ms':>9} {'tok/s':>11} {'GB/s':>8} {'%peak':>6} "
        f"{'x first':>7} {'x torch':>8}"
    )
    for r in rows:
        fmt = lambda x, spec: format(x, spec) if x is not None else "-"  # noqa: E731
        shape = "x".join(map(str, r["sizes"].values()))
        block = "x".join(map(str, r["block"][:2]))
        print(
            f"{r['op']:>4} {shape:>16} {r['io']:>3} {r['launch']:>8} {block:>10} {r['ms']:9.4f} {r['tok_s']:11.0f} {r['gb_s']:8.1f} "
            f"{fmt(r['pct_peak'], '6.1f'):>6} {fmt(r['vs_first'], '7.2f'):>7} {fmt(r['vs_torch_loop'], '8.1f'):>8}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes (for scripts/gpu_check.sh)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated ops (default: {','.join(OPS)})")
    parser.add_argument("--io", default="f32,f16", help="comma-separated I/O dtypes: f32, f16")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--peak-gbs", type=float, help="card's DRAM bandwidth, if the driver does not say")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA GPU visible to torch; nothing to time", file=sys.stderr)
        return 2
    peak, source = peak_bandwidth(args.peak_gbs)
    rows = bench(args.ops.split(","), QUICK if args.quick else SHAPES, args.io.split(","), peak)
    print_table(rows, peak, source)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "peak_gb_s": peak, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
