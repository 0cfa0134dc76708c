"""Peak resident memory per backend, each measured in a fresh process.

One process per backend: it imports the backend's libraries, records its resident set (the
baseline), loads the model, runs one prefill of the largest benchmarked [B, T] and a few steps, and
reports the kernel's own high-water mark of its resident set (VmHWM in /proc/self/status, so no
sampling can miss a spike; getrusage's ru_maxrss is no good here: Linux carries the parent's peak
across fork and exec, so every child would report at least the benchmark process's size). Measuring in the benchmark process instead would mix backends: allocators keep freed
memory, and the first backend loaded would pay for everybody's imports.

    peak_mb   the child's whole high-water mark (interpreter, libraries, weights, work buffers)
    delta_mb  peak minus the baseline: what loading and running this backend added
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any

from rwkv_export.bench.workspace import Workspace

# Libraries a backend imports, loaded before the baseline so delta_mb is the model and its work. The
# `rwkv` package is imported by backends.rwkv_package_class instead: its model family (RWKV-7 or
# 4/5/6) is fixed at import, so the import must know the checkpoint's version.
PREIMPORTS = {
    "torch": ["torch"],
    "ort-fp32": ["onnxruntime"],
    "ort-fp16": ["onnxruntime"],
    "tensorrt": ["onnxruntime"],
    "transformers": ["transformers.models.rwkv.modeling_rwkv"],
}


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (Linux), in MB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    """The resident set now (psutil only where /proc is absent)."""
    rss = _proc_status_mb("VmRSS")
    if rss is None:
        import psutil

        rss = float(psutil.Process().memory_info().rss) / 2**20
    return rss


def _peak_mb() -> float:
    """The resident set's high-water mark; ru_maxrss only where /proc is absent (see above)."""
    peak = _proc_status_mb("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS
    return peak


def child(spec: dict[str, Any]) -> dict[str, float]:
    """The measurement, run inside the fresh process."""
    import importlib

    import numpy as np

    from rwkv_export.bench.backends import make_backend, rwkv_package_class

    ws = Workspace.from_dict(spec["workspace"])
    for module in PREIMPORTS.get(spec["backend"], []):
        importlib.import_module(module)
    if spec["backend"] == "rwkv":
        rwkv_package_class(ws.version())
    baseline = _rss_mb()
    backend = make_backend(spec["backend"], ws, spec["threads"])
    loaded = _rss_mb()
    rng = np.random.default_rng(0)
    batch = min(spec["batch"], backend.max_batch or spec["batch"])
    backend.prefill(rng.integers(0, spec["vocab"], (batch, spec["seq"])))
    backend.reset(batch)
    for _ in range(spec["steps"]):
        backend.step(rng.integers(0, spec["vocab"], (batch,)))
    peak = _peak_mb()
    return {
        "baseline_mb": baseline,
        "loaded_mb": loaded,
        "peak_mb": peak,
        "delta_mb": peak - baseline,
        "batch": batch,
        "seq": spec["seq"],
        "steps": spec["steps"],
    }


def measure(
    backend: str, ws: Workspace, threads: int, vocab: int, batch: int, seq: int, steps: int, timeout: float = 600
) -> dict[str, Any]:
    """Run `child` in a fresh interpreter; {'error': ...} if it fails (the table says so)."""
    spec = {"backend": backend, "workspace": ws.to_dict(), "threads": threads, "vocab": vocab, "batch": batch, "seq": seq, "steps": steps}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rwkv_export.bench.memory", json.dumps(spec)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return dict(json.loads(lines[-1]))


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
