"""One benchmark run: load every backend, measure the limits, time them interleaved, measure memory.

    raw = run(ws, config, Settings(...), progress)      # then report.finalize(raw)

Order: load the backends (one that cannot run becomes a 'skipped' entry with its reason), check they
agree on a short prompt (the same weights really are loaded), measure bandwidth and sgemm rates,
time prefill per [B, T] and steps per B with every backend in the same rotated rounds, then measure
each backend's peak memory in a fresh process (memory.py).
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rwkv_export.bench import limits as lim
from rwkv_export.bench import memory
from rwkv_export.bench.backends import REFERENCE, Backend, BackendUnavailable, make_backend
from rwkv_export.bench.progress import Progress
from rwkv_export.bench.report import cell_key
from rwkv_export.bench.stats import interleaved, summarize
from rwkv_export.bench.workspace import Workspace
from rwkv_export.checkpoint import ModelConfig

WEIGHT_DTYPES = {"ort-fp16": "float16", "ort-int8": "int8", "ort-int4": "int4"}  # every other backend holds float32 weights
PARITY_TOKENS = 16
SETTLE_S = 0.05  # idle time before each timed call: lets the previous backend's spinning threads sleep


@dataclass
class Settings:
    backends: list[str]
    seq: list[int] = field(default_factory=lambda: [128, 512, 2048])
    batch: list[int] = field(default_factory=lambda: [1, 8])
    steps: int = 16  # consecutive steps per timed repetition
    reps: int = 3  # prefill repetitions: long calls, so few
    threads: int = 2
    max_prefill_tokens: int = 2048  # B * T above this is not timed (it would dominate the run)
    memory: bool = True
    quick_limits: bool = False
    step_reps: int = 5  # step repetitions: short calls, so the spread needs more


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("rwkv-export", "torch", "onnxruntime", "numpy", "rwkv", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _blas() -> dict[str, Any]:
    """Which BLAS kernels numpy runs (the sgemm probe uses it too), and the env vars that slow it."""
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"env": env, "numpy": "threadpoolctl not installed"}
    return {
        "env": env,
        "numpy": [{k: i.get(k) for k in ("internal_api", "architecture", "num_threads", "version")} for i in threadpool_info()],
    }


def load_backends(
    names: list[str], ws: Workspace, threads: int, progress: Progress
) -> tuple[dict[str, Backend], dict[str, dict[str, Any]]]:
    loaded: dict[str, Backend] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name in names:
        progress.stage(f"loading {name}")
        try:
            loaded[name] = make_backend(name, ws, threads)
            entries[name] = {"status": "ok", "reason": None, "weight_dtype": WEIGHT_DTYPES.get(name, "float32"), "prefill": {}, "step": {}}
        except BackendUnavailable as exc:
            entries[name] = {"status": "skipped", "reason": str(exc)}
    return loaded, entries


def parity(loaded: dict[str, Backend], vocab: int) -> dict[str, dict[str, float]]:
    """Max |logits - reference logits| on one short prompt (the reference: torch, else the first)."""
    tokens = np.random.default_rng(1).integers(0, vocab, (1, PARITY_TOKENS))
    logits = {name: np.asarray(b.prefill(tokens), dtype=np.float64) for name, b in loaded.items()}
    ref = logits.get(REFERENCE, next(iter(logits.values())))
    scale = float(np.abs(ref).max()) or 1.0
    return {n: {"max_abs": float(np.abs(v - ref).max()), "max_rel": float(np.abs(v - ref).max()) / scale} for n, v in logits.items()}


def run(ws: Workspace, config: ModelConfig, parameters: int, settings: Settings, progress: Progress | None = None) -> dict[str, Any]:
    progress = progress or Progress()
    s = settings
    load_start = os.getloadavg()[0]  # other work on the machine skews everything: say how much there was
    cells = [(b, t) for b in s.batch for t in s.seq]
    loaded, entries = load_backends(s.backends, ws, s.threads, progress)
    if not loaded:
        raise BackendUnavailable(
            "none of the requested backends can run here: " + "; ".join(f"{n}: {e['reason']}" for n, e in entries.items())
        )
    r = _Run(loaded, entries, s, config.vocab_size, progress)
    n_ticks = sum(len(r.runnable(b, t)) for b, t in cells) * s.reps + sum(len(r.runnable(b, None)) for b in s.batch) * s.step_reps
    progress.total(n_ticks + (len(loaded) if s.memory else 0) + 2)

    progress.stage("checking that all backends agree")
    checks = parity(loaded, config.vocab_size)
    for name, check in checks.items():
        entries[name]["parity"] = check
    progress.tick()

    progress.stage("measuring memory bandwidth and sgemm throughput")
    limits = lim.measure_limits(config, quick=s.quick_limits, threads=s.threads)
    progress.tick()

    rng = np.random.default_rng(0)
    _time_prefill(r, cells, rng)
    _time_steps(r, rng)
    for b in loaded.values():
        b.close()
    if s.memory:
        _measure_memory(r, cells, ws)
    return _result(r, ws, config, parameters, load_start, limits, cells)


@dataclass
class _Run:
    """What the measurements of one run share; they fill `entries` (backend name -> its result) in place."""

    loaded: dict[str, Backend]
    entries: dict[str, Any]
    s: Settings
    vocab_size: int
    progress: Progress

    def runnable(self, batch: int, seq: int | None) -> dict[str, Backend]:
        """The backends that take this cell (seq None: a step at this batch)."""
        return {
            n: b
            for n, b in self.loaded.items()
            if (b.max_batch is None or batch <= b.max_batch) and (seq is None or batch * seq <= self.s.max_prefill_tokens)
        }


def _time_prefill(r: _Run, cells: list[tuple[int, int]], rng: np.random.Generator) -> None:
    """Every (batch, seq) cell, the backends interleaved: their times, or why a backend skips the cell."""
    s = r.s
    for batch, seq in cells:
        key = cell_key(batch, seq)
        todo = r.runnable(batch, seq)
        for name in r.loaded:
            if name not in todo:
                r.entries[name]["prefill"][key] = {"batch": batch, "seq": seq, "skipped": _why_not(r.loaded[name], batch, seq, s)}
        if not todo:
            continue
        r.progress.stage(f"prefill {batch} x {seq}")
        tokens = rng.integers(0, r.vocab_size, (batch, seq))
        # Small cells get a warm-up round (first-call allocations); large ones are long enough that
        # the median of the repetitions absorbs a slow first call, and a warm-up would double them.
        samples = interleaved(
            {n: functools.partial(b.prefill, tokens) for n, b in todo.items()},
            s.reps,
            warmup=1 if batch * seq <= 128 else 0,
            tick=r.progress.tick,
            settle=SETTLE_S,
        )
        for name, secs in samples.items():
            r.entries[name]["prefill"][key] = {"batch": batch, "seq": seq, "seconds": summarize(secs).to_dict()}


def _time_steps(r: _Run, rng: np.random.Generator) -> None:
    """s.steps consecutive steps at each batch, the backends interleaved: the time per step, or why a backend skips."""
    s = r.s
    for batch in s.batch:
        todo = r.runnable(batch, None)
        for name in r.loaded:
            if name not in todo:
                r.entries[name]["step"][str(batch)] = {"batch": batch, "skipped": _why_not(r.loaded[name], batch, None, s)}
        r.progress.stage(f"steps at batch {batch}")
        token_rows = rng.integers(0, r.vocab_size, (s.steps, batch))
        for b in todo.values():
            b.reset(batch)

        def steps(b: Backend) -> None:
            for row in token_rows:
                b.step(row)

        samples = interleaved(
            {n: functools.partial(steps, b) for n, b in todo.items()}, s.step_reps, warmup=1, tick=r.progress.tick, settle=SETTLE_S
        )
        for name, secs in samples.items():
            per_step = summarize([x / s.steps for x in secs])
            r.entries[name]["step"][str(batch)] = {"batch": batch, "steps": s.steps, "seconds": per_step.to_dict()}


def _measure_memory(r: _Run, cells: list[tuple[int, int]], ws: Workspace) -> None:
    """Each backend's peak memory in a fresh process, on the largest timed prefill cell (the workload whose peak matters)."""
    s = r.s
    timed = [(b, t) for b, t in cells if b * t <= s.max_prefill_tokens] or [(1, min(s.seq))]
    mem_batch, mem_seq = max(timed, key=lambda c: c[0] * c[1])
    for name in r.loaded:
        r.progress.stage(f"peak memory of {name} (fresh process)")
        r.entries[name]["memory"] = memory.measure(name, ws, s.threads, r.vocab_size, mem_batch, mem_seq, min(s.steps, 8))
        r.progress.tick()


def _result(
    r: _Run, ws: Workspace, config: ModelConfig, parameters: int, load_start: float, limits: lim.Limits, cells: list[tuple[int, int]]
) -> dict[str, Any]:
    """The result document: machine, model, settings, limits (with the step floors) and every backend's entry."""
    s, loaded, entries = r.s, r.loaded, r.entries
    floors = {d: 1e3 * lim.step_floor_seconds(config, limits, nbytes) for d, nbytes in (("float32", 4), ("float16", 2))}
    quant_bytes = {
        d: lim.quantized_step_weight_bytes(ws.onnx_dir(d), config)
        for d in ("int8", "int4")
        if any(WEIGHT_DTYPES.get(n) == d for n in loaded)
    }
    floors |= {d: 1e3 * nbytes / (limits.bandwidth_gbs * 1e9) for d, nbytes in quant_bytes.items()}
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "versions": _versions(),
            "blas": _blas(),
            "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        },
        "model": {
            "source": ws.source,
            "cache": str(ws.root),
            "version": config.version,
            "n_layer": config.n_layer,
            "n_embd": config.n_embd,
            "vocab_size": config.vocab_size,
            "ffn_size": config.ffn_size,
            **{k: v for k in ("n_head", "head_size") if (v := getattr(config, k)) is not None},
            "parameters": parameters,
            "step_weight_bytes": {"float32": lim.step_weight_bytes(config, 4), "float16": lim.step_weight_bytes(config, 2), **quant_bytes},
        },
        "settings": asdict(s),
        "limits": {
            **limits.to_dict(),
            "step_floor_ms": floors,
            "prefill_ceiling_tok_s": {
                cell_key(b, t): lim.prefill_ceiling_tok_s(config, limits, b, t) for b, t in cells if b * t <= s.max_prefill_tokens
            },
        },
        "backends": entries,
    }


def _why_not(backend: Backend, batch: int, seq: int | None, s: Settings) -> str:
    if backend.max_batch is not None and batch > backend.max_batch:
        return f"runs one sequence per call (batch {backend.max_batch} only)"
    return f"B x T = {batch * (seq or 1)} is over --max-prefill-tokens {s.max_prefill_tokens}"
