"""`bench --profile`: where ONNX Runtime spends a step and a prefill, summed by operator type.

ORT's own profiler (SessionOptions.enable_profiling) records every kernel's duration; summing them
by op type says what bounds a graph: MatMul/Gemm near the bandwidth floor means the step is
memory-bound as it should be, while time in the WKV function body, or in elementwise ops, is work
the floor does not count. ORT inlines the WKV function (rwkv::WKV4, or WKV5/6/7 for the later
versions: the manifest names it) and profiles both a control-flow node (If, Scan, Loop) and every
node of its body; body nodes are told apart by running inside a control-flow node's time span and
counted once, within one 'rwkv::WKV<n>' row.
"""

from __future__ import annotations

import bisect
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.bench.workspace import Workspace

CONTROL_FLOW = ("If", "Scan", "Loop")


def _session(path: Path, threads: int, prefix: str | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # as OrtRunner sets it
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def wkv_row(op: str) -> str:
    return f"rwkv::{op} If/Scan (with body)"


WKV_ROW = wkv_row("WKV4")


def summarize_profile(events: list[dict[str, Any]], runs: int, wkv_op: str = "WKV4") -> list[dict[str, Any]]:
    """Kernel events -> [{op, ms_per_run, share, nodes}] by op type, largest first.

    ORT profiles a control-flow node and, separately, every node its subgraphs run, during it. The
    exported graphs have control flow only inside the rwkv::WKV<n> function body (torch's trace has
    none), so outermost If/Scan/Loop events make one WKV row and the events that run within them
    (same thread, inside their time span) are skipped: each microsecond is counted once.
    """
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    spans: list[tuple[int, int]] = []  # outermost control-flow spans, by start (they do not overlap)
    for e in sorted((e for e in kernels if e.get("args", {}).get("op_name") in CONTROL_FLOW), key=lambda e: int(e["ts"])):
        ts, end = int(e["ts"]), int(e["ts"]) + int(e["dur"])
        if not spans or ts >= spans[-1][1]:
            spans.append((ts, end))
    starts = [s for s, _ in spans]

    def nested(e: dict[str, Any]) -> bool:
        ts, end = int(e["ts"]), int(e["ts"]) + int(e["dur"])
        i = bisect.bisect_right(starts, ts) - 1
        return i >= 0 and end <= spans[i][1] and (ts, end) != spans[i]

    totals: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for e in kernels:
        if nested(e):
            continue
        op = e.get("args", {}).get("op_name", "?")
        key = wkv_row(wkv_op) if op in CONTROL_FLOW else op
        totals[key] += float(e.get("dur", 0)) / 1e3
        nodes[key].add(str(e["name"]))
    total = sum(totals.values()) or 1.0
    rows = [{"op": k, "ms_per_run": v / runs, "share": v / total, "nodes": len(nodes[k])} for k, v in totals.items()]
    return sorted(rows, key=lambda r: -r["ms_per_run"])


def profile(ws: Workspace, vocab: int, seq: int, threads: int, runs: int = 5) -> dict[str, Any]:
    """Profile the float32 step (B=1) and prefill (1 x seq) graphs; after one unprofiled warm-up each."""
    from rwkv_export.manifest import Manifest

    manifest = Manifest.read(ws.onnx_dir("float32"))
    wkv_op = manifest.export.op
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for graph, tokens in (("step", rng.integers(0, vocab, (1,))), ("prefill", rng.integers(0, vocab, (1, seq)))):
        feeds: dict[str, np.ndarray] = {"tokens": tokens.astype(np.int64), **manifest.initial_state(1)}
        path = manifest.path(manifest.graph(graph).file)
        # the same runs unprofiled first: the profiler's own cost shows as the gap between the two
        plain = _session(path, threads, None)
        plain.run(None, feeds)
        wall = []
        for _ in range(runs):
            start = time.perf_counter()
            plain.run(None, feeds)
            wall.append(time.perf_counter() - start)
        del plain
        with tempfile.TemporaryDirectory() as tmp:
            session = _session(path, threads, str(Path(tmp) / graph))
            session.run(None, feeds)  # warm-up, profiled too; dropped below by counting runs + 1
            for _ in range(runs):
                session.run(None, feeds)
            events = json.loads(Path(session.end_profiling()).read_text())
        out[graph] = {
            "tokens": list(tokens.shape),
            "runs": runs,
            "unprofiled_ms": 1e3 * float(np.median(wall)),
            "ops": summarize_profile(events, runs + 1, wkv_op),
        }
    return {"kind": "profile", "threads": threads, "version": manifest.model.version, "wkv_op": wkv_op, "graphs": out}


def format_table(result: dict[str, Any], top: int = 8) -> str:
    out = [
        f"ONNX Runtime float32 kernel time by op type, RWKV-{result.get('version', '4')} ({result['threads']} threads; "
        "ORT's profiler, mean per run)"
    ]
    for graph, g in result["graphs"].items():
        total = sum(r["ms_per_run"] for r in g["ops"])
        out.append(
            f"  {graph} {g['tokens']}: {total:.1f} ms of kernels per profiled run; {g['unprofiled_ms']:.1f} ms per run unprofiled (median)"
        )
        for r in g["ops"][:top]:
            out.append(f"    {r['op']:<32} {r['ms_per_run']:8.2f} ms {100 * r['share']:5.1f}%  ({r['nodes']} nodes)")
    return "\n".join(out)
