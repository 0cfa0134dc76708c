"""Stage 5, parity: run one scenario on every backend and judge each against the float64 oracle.

    compare.py     per-tensor metrics (pure numpy)
    tolerances.py  per-dtype tolerances, with reasons
    scenario.py    prefill, N teacher-forced steps, chunked prefill; recorded point by point
    guarantees.py  continuation through a state file, chunking, batch invariance, step = prefill(T=1)
    backends.py    torch / ONNX Runtime / TensorRT backends, planned with skip reasons
    report.py      judging, first divergence, table and JSON

`verify_all(checkpoint, exports, names, tolerances, ...)` ties them together for the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rwkv_export.errors import first_line
from rwkv_export.parity import backends, guarantees, scenario
from rwkv_export.parity.report import BackendResult, add_guarantees, assess
from rwkv_export.parity.tolerances import DEFAULT_TOLERANCES, Tolerance

__all__ = ["BackendResult", "verify_all"]


def verify_all(
    checkpoint: Any,
    exports: dict[str, Path | str],
    names: Sequence[str],
    scen: scenario.Scenario,
    tolerances: dict[str, Tolerance] = DEFAULT_TOLERANCES,
    threads: int = 0,
    progress: Callable[[str], None] = lambda message: None,
) -> list[BackendResult]:
    """Oracle first, then every planned backend; a backend that raises is an "error" (a failure)."""
    start = time.perf_counter()
    with backends.TorchBackend(checkpoint, "float64") as oracle:
        reference = scenario.run(oracle, scen)
    progress(f"oracle {backends.ORACLE}: {len(reference.points)} points in {time.perf_counter() - start:.1f} s")
    feed = scenario.step_feed(reference)
    results = []
    for plan in backends.plan(names, checkpoint, exports, threads):
        if plan.open is None:
            results.append(BackendResult(plan.name, plan.dtype, "skipped", plan.skip or ""))
            progress(f"{plan.name}: skipped: {plan.skip}")
            continue
        start = time.perf_counter()
        try:
            with plan.open() as backend:
                trace = scenario.run(backend, scen, feed)
                promises = guarantees.check_all(backend, scen, tolerances[plan.dtype])
        except Exception as exc:  # any crash of a backend is its failure, reported, never a traceback
            first = first_line(exc)
            results.append(BackendResult(plan.name, plan.dtype, "error", f"{type(exc).__name__}: {first}"))
            progress(f"{plan.name}: error: {first}")
            continue
        result = add_guarantees(assess(plan.name, plan.dtype, reference, trace, tolerances[plan.dtype]), promises)
        result.seconds = time.perf_counter() - start
        results.append(result)
        progress(f"{plan.name}: {result.status} ({result.seconds:.1f} s)")
    return results
