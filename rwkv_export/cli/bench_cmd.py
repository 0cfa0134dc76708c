"""The `bench` verb: speed and memory of every backend side by side, against peers and limits."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from rwkv_export.bench.progress import Progress
from rwkv_export.checkpoint.versions import KNOWN_VERSIONS
from rwkv_export.cli.options import bounded, examples, path_option, quiet_flag, shown_option
from rwkv_export.errors import RwkvExportError

MAX_LIST_ITEM = 1 << 20  # --seq / --batch entries (tokens, sequences)


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{value}'") from None
    if not items or min(items) < 1 or max(items) > MAX_LIST_ITEM:
        raise click.BadParameter(f"expected integers in 1 .. {MAX_LIST_ITEM}, got '{value}'")
    return items


class _Progress(Progress):
    """A progress bar on stderr (stdout carries only the table); plain lines when -q is off and no tty."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.label = ""
        self.done, self.length = 0, 0

    def stage(self, message: str) -> None:
        self.label = message
        if self.quiet:
            return
        if self.bar is not None and sys.stderr.isatty():
            self.bar.label = f"{message:<40}"
            self.bar.render_progress()
        else:
            count = f" ({self.done}/{self.length} timed calls done)" if self.length else ""
            click.echo(f"[bench] {message}{count}", err=True)

    def total(self, n: int) -> None:
        self.length = n
        if not self.quiet and sys.stderr.isatty():
            self.bar = click.progressbar(length=n, label=f"{self.label:<40}", file=sys.stderr, show_pos=True, show_eta=True)
            self.bar.__enter__()

    def tick(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.command(
    epilog=examples(
        "rwkv-export bench                                  # 169M-shaped random RWKV-4, every backend",
        "rwkv-export bench --version 7 --backends torch,ort-fp32,rwkv --seq 128 --batch 1   # 169M-shaped random RWKV-7",
        "rwkv-export bench model.pth --backends torch,ort-fp32,rwkv --seq 512 --batch 1 --json bench.json",
        "rwkv-export bench --scaling --seq 128,1024,8192",
        "rwkv-export bench --paper 1024 --plot paper.png",
        "rwkv-export bench --profile --seq 512",
    )
)
@click.argument("source", required=False, type=click.Path(path_type=str))
@click.option(
    "--backends",
    default=None,
    help="Comma-separated backends (default: all): torch, ort-fp32, ort-fp16, ort-int8, ort-int4, tensorrt, rwkv, transformers.",
)
@click.option("--seq", callback=_int_list, default=None, help="Prefill lengths T  [default: 128,512,2048; --scaling: 128..8192]")
@shown_option("--batch", callback=_int_list, default="1,8", help="Batch sizes B.")
@shown_option("--steps", type=bounded(1, 1 << 20), default=16, help="Consecutive steps per timed repetition.")
@shown_option("--reps", type=bounded(1, 1 << 16), default=3, help="Repetitions of each prefill figure (the median is reported).")
@shown_option("--step-reps", type=bounded(1, 1 << 16), default=5, help="Repetitions of each step figure.")
@shown_option("--threads", type=bounded(1, 1024), default=2, help="Threads for ONNX Runtime and torch alike.")
@shown_option(
    "--max-prefill-tokens",
    type=bounded(1),
    default=2048,
    help="Skip prefill cells with B x T above this (they would dominate the run).",
)
@click.option("--no-memory", is_flag=True, help="Skip the per-backend peak-memory processes.")
@path_option("--json", "json_file", help="Also write the full result as JSON to this file.")
@click.option("--scaling", is_flag=True, help="Instead: ORT prefill time and peak memory as T grows, whole vs chunked.")
@shown_option("--chunk", type=bounded(1, MAX_LIST_ITEM), default=512, help="--scaling: tokens per prefill call when chunking.")
@click.option(
    "--paper",
    type=bounded(2, MAX_LIST_ITEM),
    default=None,
    metavar="N",
    help="Instead: the paper's generation experiment over N tokens (RWKV vs GPT-NeoX).",
)
@click.option(
    "--profile", "profile_ops", is_flag=True, help="Instead: ORT's profiler on the float32 step and prefill (first --seq), time by op type."
)
@path_option("--plot", help="--paper/--scaling: write a PNG plot here.")
@path_option(
    "--cache-dir",
    path_type=Path,
    help="Where the model files are made and kept [default: ~/.cache/rwkv-export/bench].",
)
@click.option(
    "--version",
    "rwkv_version",
    type=click.Choice(KNOWN_VERSIONS),
    default=None,
    help="Version of the random model benchmarked when no SOURCE is given  [default: 4]",
)
@click.option("--head-size", type=bounded(1, 4096), default=None, help="RWKV-5/6/7 random model: channels per head  [default: 64]")
@click.option("--shape", default=None, hidden=True, help="Random model shape LAYERSxEMBDxVOCAB in place of 12x768x50277 (tests).")
@click.option("--quick-limits", is_flag=True, hidden=True, help="Small limit probes (tests).")
@click.option("--fresh", is_flag=True, help="Remake the cached model files (checkpoint, HF directory, exports).")
@quiet_flag
def bench(
    source: str | None,
    backends: str | None,
    seq: list[int] | None,
    batch: list[int],
    steps: int,
    reps: int,
    step_reps: int,
    threads: int,
    max_prefill_tokens: int,
    no_memory: bool,
    json_file: str | None,
    scaling: bool,
    chunk: int,
    paper: int | None,
    profile_ops: bool,
    plot: str | None,
    cache_dir: Path | None,
    rwkv_version: str | None,
    head_size: int | None,
    shape: str | None,
    quick_limits: bool,
    fresh: bool,
    quiet: bool,
) -> None:
    """Benchmark SOURCE (a checkpoint; default: a 169M-shaped random model of --version) on every backend.

    Prefill tokens/s per B x T, step ms per B, peak memory; each figure as a ratio to the torch
    reference and to the machine's measured limits (bandwidth floor, sgemm ceiling). Table on
    stdout, progress on stderr.
    """
    from rwkv_export.bench import suite, workspace
    from rwkv_export.bench.backends import BackendUnavailable, needs

    names = _backend_names(backends)
    if plot and not (paper or scaling):
        raise RwkvExportError("--plot goes with --paper N or --scaling")
    progress = _Progress(quiet)
    ws, make = _workspace(source, cache_dir or workspace.default_cache_dir(), shape, rwkv_version, head_size)
    progress.stage(f"model files in {ws.root}")
    need = needs(["ort-fp32"] if (scaling or paper or profile_ops) else names)
    ckpt = workspace.ensure(ws, make, need["hf"], need["dtypes"], progress.stage, fresh)
    settings = suite.Settings(names, seq or [128, 512, 2048], batch, steps=steps, reps=reps, step_reps=step_reps, threads=threads,
                              max_prefill_tokens=max_prefill_tokens, memory=not no_memory, quick_limits=quick_limits)  # fmt: skip
    try:
        result, text = _measure(ws, ckpt, settings, progress, seq, chunk, paper, scaling, profile_ops, plot)
    except BackendUnavailable as exc:
        raise RwkvExportError(str(exc)) from None
    finally:
        progress.close()
    if json_file:
        from rwkv_export.fileio import atomic_write_bytes

        atomic_write_bytes(json_file, (json.dumps(result, indent=1) + "\n").encode())
    click.echo(text)


def _backend_names(backends: str | None) -> list[str]:
    """--backends as a list (default: all), an unknown name refused."""
    from rwkv_export.bench.backends import ALL_BACKENDS

    names = [b.strip() for b in backends.split(",")] if backends else list(ALL_BACKENDS)
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise RwkvExportError(f"unknown backend '{unknown[0]}' (expected some of {', '.join(ALL_BACKENDS)})")
    return names


def _workspace(source: str | None, cache: Path, shape: str | None, rwkv_version: str | None, head_size: int | None) -> tuple[Any, Any]:
    """(workspace, maker) for SOURCE, or for the random model of --shape / --version / --head-size."""
    from rwkv_export.bench import workspace

    if source is None:
        try:
            n_layer, n_embd, vocab = workspace.DEFAULT_SHAPE if shape is None else (int(x) for x in shape.lower().split("x"))
        except ValueError:
            raise RwkvExportError(f"--shape takes LAYERSxEMBDxVOCAB, e.g. 2x64x97; got '{shape}'") from None
        return workspace.random_workspace(cache, n_layer, n_embd, vocab, version=rwkv_version or "4", head_size=head_size)
    if rwkv_version is not None or head_size is not None:
        raise RwkvExportError("--version and --head-size describe the random model; SOURCE's own version and sizes are read from it")
    if not Path(source).exists():
        raise RwkvExportError(f"checkpoint '{source}' does not exist")
    return workspace.source_workspace(cache, source)


def _measure(
    ws: Any,
    ckpt: Any,
    settings: Any,
    progress: _Progress,
    seq: list[int] | None,
    chunk: int,
    paper: int | None,
    scaling: bool,
    profile_ops: bool,
    plot: str | None,
) -> tuple[Any, str]:
    """(result, table) of the mode asked for: --profile, --paper, --scaling, else the backend suite."""
    if profile_ops:
        return _profile(ws, ckpt, (seq or [512])[0], settings.threads)
    if paper:
        return _paper(ws, ckpt, paper, settings.threads, plot, progress)
    if scaling:
        return _scaling(ws, ckpt, seq, chunk, settings.threads, settings.reps, plot, progress)
    return _suite(ws, ckpt, settings, progress)


def _profile(ws: Any, ckpt: Any, seq: int, threads: int) -> tuple[Any, str]:
    from rwkv_export.bench import profile as profile_mod

    result = profile_mod.profile(ws, ckpt.config.vocab_size, seq, threads)
    return result, profile_mod.format_table(result)


def _paper(ws: Any, ckpt: Any, tokens: int, threads: int, plot: str | None, progress: _Progress) -> tuple[Any, str]:
    from rwkv_export.bench import paper as paper_mod

    result = paper_mod.run(ws, ckpt.config, tokens, threads, progress.stage)
    text = paper_mod.format_table(result)
    if plot:
        paper_mod.plot(result, plot)
    return result, text


def _scaling(
    ws: Any, ckpt: Any, seq: list[int] | None, chunk: int, threads: int, reps: int, plot: str | None, progress: _Progress
) -> tuple[Any, str]:
    from rwkv_export.bench import scaling as scaling_mod

    result = scaling_mod.run(ws, ckpt.config, seq or scaling_mod.DEFAULT_SEQ, chunk, threads, reps, progress.stage)
    text = scaling_mod.format_table(result)
    if plot:
        scaling_mod.plot(result, plot)
    return result, text


def _suite(ws: Any, ckpt: Any, settings: Any, progress: _Progress) -> tuple[Any, str]:
    from rwkv_export.bench import report, suite

    result = report.finalize(suite.run(ws, ckpt.config, ckpt.parameter_count, settings, progress))
    return result, report.format_table(result)


COMMANDS = [bench]
