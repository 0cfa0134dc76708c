"""Export at real sizes: wall time and peak RSS of `export`, and ONNX Runtime's load time and RSS.

For each RWKV-7 shape (random bfloat16 weights, vocab 65536, written streamed by make-checkpoint):
  copy_s      time to copy the checkpoint file on the same disk (the floor a streamed export is held to)
  export_s    `rwkv-export export --dtype float16` (or float32, or int8/int4: --quantize) wall time, and export_rss_gb its peak RSS
              (/usr/bin/time -v, every process of the command)
  load_s      ExportedModel (ONNX Runtime, CPU) opening the prefill and step sessions together, and
              load_rss_gb the RSS after a 4-token prefill and two steps (VmRSS; weights_gb is
              weights.data's size (an inline export's: step.onnx's), the floor: both sessions read one mapping of it)
  step_s      one step at batch 1 (after one warm-up): s/token; weights_gb / step_s is the bandwidth it reads at
Each step runs in its own process, one after the other, so peaks do not mix. Prints a table and,
with --json, writes the figures; --plot draws RSS against model bytes (matplotlib, the bench extra).

    python benchmarks/export_scale.py --sizes 0.1B,0.4B,1.5B,3B --dir /tmp/scale --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {  # RWKV-7 World's released shapes (layers x width); vocab 65536
    "0.1B": (12, 768),
    "0.4B": (24, 1024),
    "1.5B": (24, 2048),
    "3B": (32, 2560),
    "7.2B": (32, 4096),
}
QUANTIZED = ("int8", "int4")  # exported as --dtype float32 --quantize <it> (MatMulNBits)
CLI = [sys.executable, "-c", "from rwkv_export.cli import main; main()"]

_LOAD = """
import json, sys, time
import numpy as np
from rwkv_export.runtime import ExportedModel
def status(key):
    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) * 1024
t = time.perf_counter()
with ExportedModel(sys.argv[1], provider='cpu', threads=2) as m:
    load = time.perf_counter() - t
    state = m.initial_state(1)
    logits, state = m.prefill(np.array([[1, 2, 3, 4]]), state)
    m.step(np.array([5]), state)
    t = time.perf_counter(); m.step(np.array([5]), state); one = time.perf_counter() - t
    print(json.dumps({'load_s': load, 'load_rss': status('VmRSS'), 'step_s': one, 'peak_rss': status('VmHWM')}))
"""


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS bytes) of a command under /usr/bin/time -v."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))  # type: ignore[union-attr]
    return wall, kb * 1024


def measure(size: str, work: Path, run_ort: bool, dtype: str) -> dict[str, object]:
    layers, width = SHAPES[size]
    ckpt = work / f"rwkv7-{size}.safetensors"
    if not ckpt.exists():
        cmd = [*CLI, "make-checkpoint", "--version", "7", "--layers", str(layers), "--embd", str(width), "--vocab", "65536"]
        subprocess.run([*cmd, "--dtype", "bfloat16", "-o", str(ckpt)], check=True)
    os.sync()
    start = time.perf_counter()
    shutil.copyfile(ckpt, work / "copy.tmp")
    os.sync()
    copy_s = time.perf_counter() - start
    (work / "copy.tmp").unlink()
    out = work / f"export-{size}-{dtype}"
    how = ["--dtype", "float32", "--quantize", dtype] if dtype in QUANTIZED else ["--dtype", dtype]
    export_s, export_rss = timed([*CLI, "export", str(ckpt), "-o", str(out), *how, "--force", "-q"])
    row: dict[str, object] = {
        "size": size, "dtype": dtype, "layers": layers, "width": width, "checkpoint_gb": ckpt.stat().st_size / 1e9,
        "copy_s": copy_s, "export_s": export_s, "export_rss_gb": export_rss / 1e9,
        "weights_gb": next(f for f in (out / "weights.data", out / "step.onnx") if f.exists()).stat().st_size / 1e9,
    }  # fmt: skip
    if run_ort:
        proc = subprocess.run([sys.executable, "-c", _LOAD, str(out)], capture_output=True, text=True)
        if proc.returncode == 0:
            load = json.loads(proc.stdout.strip().splitlines()[-1])
            row |= {"load_s": load["load_s"], "load_rss_gb": load["load_rss"] / 1e9, "step_s": load["step_s"]}
        else:
            row["load_error"] = proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else f"exit {proc.returncode}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="0.1B,0.4B,1.5B,3B")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/rwkv-export-scale"))
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "float32", *QUANTIZED],
        help="The export's dtype (int8/int4: float32 activations, --quantize).",
    )
    parser.add_argument("--no-ort", action="store_true", help="Export only (skip the ONNX Runtime load).")
    parser.add_argument("--keep", action="store_true", help="Keep the exports (default: remove each after measuring).")
    parser.add_argument("--plot", type=Path, help="Write a PNG of peak RSS against model bytes.")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        row = measure(size, args.dir, not args.no_ort, args.dtype)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        if not args.keep:
            shutil.rmtree(args.dir / f"export-{size}-{args.dtype}", ignore_errors=True)
    cols = ["size", "dtype", "checkpoint_gb", "copy_s", "export_s", "export_rss_gb", "weights_gb", "load_s", "load_rss_gb", "step_s"]
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for row in rows:
        print(" | ".join(f"{row.get(c):.2f}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        x = [float(r["checkpoint_gb"]) for r in rows]  # type: ignore[arg-type]
        ax.plot(x, [r["export_rss_gb"] for r in rows], "o-", label="export peak RSS")
        if all("load_rss_gb" in r for r in rows):
            ax.plot(x, [r["load_rss_gb"] for r in rows], "s-", label="ORT prefill+step RSS")
        ax.plot(x, x, ":", label="checkpoint bytes")
        ax.set_xlabel("checkpoint (GB, bfloat16)")
        ax.set_ylabel("GB")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)


if __name__ == "__main__":
    main()
