"""`rwkv-export verify SOURCE`: parity of every available backend against the float64 oracle.

SOURCE is a checkpoint (float32 and float16 graphs are exported with --all-logits into --export-dir
or a temporary directory) or an exported DIR (its checkpoint from --checkpoint or the manifest's
source.path). Exit 0 when every backend passes, 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from rwkv_export.cli.options import SEED, examples, force_flag, path_option, progress_printer, quiet_flag, shown_option
from rwkv_export.errors import RwkvExportError
from rwkv_export.parity.tolerances import help_text

EXIT_PARITY_FAILED = 1


# The tolerance fields an option overrides, each with the option's names (the first is the one errors name).
TOLERANCE_OPTIONS = {
    "logits_rtol": ("--rtol", "--tol"),
    "logits_atol": ("--atol",),
    "state_rtol": ("--state-rtol",),
    "state_atol": ("--state-atol",),
}


def _tolerance_options(command: Any) -> Any:
    """--rtol/--tol, --atol, --state-rtol, --state-atol: repeatable DTYPE=VALUE overrides, in that order in --help."""
    for field, names in reversed(TOLERANCE_OPTIONS.items()):
        text = f"Override the {field.replace('_', ' ')} of one dtype, e.g. float16=3e-2 (repeatable)."
        command = click.option(*names, field, multiple=True, metavar="DTYPE=VALUE", help=text)(command)
    return command


@click.command(
    "verify",
    epilog=examples(
        "rwkv-export verify model.pth",
        "rwkv-export verify out/ --checkpoint model.pth --backends ort --json parity.json",
        "rwkv-export verify tiny-rwkv-4v0-660K-FP32.bin --seq 64 --steps 32 --tol float16=3e-2",
        "rwkv-export verify model.pth --backends torch-float32,'ort-*-float16' --export-dir exported/",
    ),
    help=f"""Check that every backend computes what SOURCE's checkpoint computes.

SOURCE is a checkpoint or an exported directory. Scenario: prefill of --seq tokens, --steps steps fed
the oracle's greedy tokens, and the prefill split in two chunks with the state carried. Compared per
step against the torch float64 oracle: logits and every state tensor (max/mean/median/p99 abs and
rel error), argmax and top-5 agreement, KL divergence, greedy-match length.

Each backend is also checked against itself (second table; "guarantees" in the JSON): continuation
through a state file, chunked prefill, batch invariance and step = prefill at T = 1, within its
dtype's state tolerance and with identical greedy tokens.

Backends: torch-float32, torch-float16, ort-{{cpu,cuda}}-{{float32,float16}}, tensorrt-{{float32,float16}}
(built engines); unavailable ones are reported as skipped.

A tensor passes when max|got - ref| <= atol + rtol * max|ref| (state: per layer). Defaults:

{help_text()}

An exported DIR is checked first: every file its manifest names must lie inside DIR and match its
sha256. A file fully hashed once is then trusted while its size and modification time are unchanged
(cache: $RWKV_EXPORT_CACHE or ~/.cache/rwkv-export/sha256-cache.json; RWKV_EXPORT_HASH_CACHE=0
hashes every time).

Exit codes: 0 every backend passes, 1 one fails, 2 bad input.""",
)
@click.argument("source", type=click.Path(path_type=str))
@path_option("--checkpoint", help="The checkpoint of an exported SOURCE (default: the manifest's source.path).")
@path_option("--export-dir", help="Keep the graphs exported from a checkpoint SOURCE here (DIR/float32, DIR/float16).")
@click.option(
    "--backends",
    "backend_patterns",
    multiple=True,
    metavar="NAMES",
    help="Backends to run: names, prefixes (ort, torch) or globs, comma-separated or repeated (default: all).",
)
@shown_option("--seq", type=click.IntRange(1, 65536), default=16, help="Prompt length T of the prefill.")
@shown_option("--steps", type=click.IntRange(0, 4096), default=8, help="Steps N after the prefill.")
@shown_option("--batch", type=click.IntRange(1, 1024), default=2, help="Sequences per call.")
@shown_option("--seed", type=SEED, default=0, help="Seed of the random prompt (0 .. 2**64-1).")
@path_option("--json", "json_file", help="Also write the full report as JSON to this file.")
@_tolerance_options
@shown_option("--threads", type=click.IntRange(0, 1024), default=0, help="ONNX Runtime threads (0: all cores).")
@force_flag
@quiet_flag
@click.pass_context
def verify(
    ctx: click.Context,
    source: str,
    checkpoint: str | None,
    export_dir: str | None,
    backend_patterns: tuple[str, ...],
    seq: int,
    steps: int,
    batch: int,
    seed: int,
    json_file: str | None,
    threads: int,
    force: bool,
    quiet: bool,
    **tolerance_overrides: tuple[str, ...],
) -> None:
    from rwkv_export.parity import backends, report, scenario, tolerances, verify_all

    progress = progress_printer(quiet, "verify")
    tols = tolerances.tolerances_with(
        {field: tolerances.parse_overrides(tolerance_overrides[field], opts[0]) for field, opts in TOLERANCE_OPTIONS.items()}
    )
    names = backends.select([p.strip() for text in backend_patterns for p in text.split(",") if p.strip()])
    with tempfile.TemporaryDirectory(prefix="rwkv-verify-") as tmp:
        ckpt, exports = _resolve_source(source, checkpoint, export_dir or tmp, backends.needed_exports(names), force, progress)
        cfg = ckpt.config
        scen = scenario.Scenario.random(cfg.vocab_size, batch, seq, steps, seed)
        progress(f"scenario: batch {batch}, prefill {seq} tokens, {steps} steps, chunked {scen.split}+{seq - scen.split}")
        results = verify_all(ckpt, exports, names, scen, tols, threads, progress)
    click.echo(report.table(results))
    if json_file:
        context = {"source": source, "checkpoint": str(ckpt.path), "scenario": {"batch": batch, "seq": seq, "steps": steps,
                   "split": scen.split, "seed": seed}, "model": cfg.to_dict()}  # fmt: skip
        Path(json_file).write_text(report.to_json(results, context) + "\n")
        progress(f"wrote {json_file}")
    if any(r.failed for r in results):
        ctx.exit(EXIT_PARITY_FAILED)


def _resolve_source(
    source: str, checkpoint: str | None, export_root: str, dtypes: list[str], force: bool, progress: Any
) -> tuple[Any, dict[str, Path | str]]:
    """(loaded checkpoint, dtype -> exported dir or the reason there is none)."""
    from rwkv_export.checkpoint import load_checkpoint
    from rwkv_export.manifest import MANIFEST, Manifest

    path = Path(source)
    if path.is_dir() and (path / MANIFEST).exists():
        manifest = Manifest.read(path)
        for graph in ("prefill", "step"):
            manifest.graph(graph)
        ckpt_path = checkpoint or (manifest.source.path if manifest.source else None)
        if not ckpt_path or not Path(ckpt_path).exists():
            raise RwkvExportError(f"the checkpoint of '{source}' ('{ckpt_path}', from its manifest) does not exist; pass --checkpoint FILE")
        ckpt = load_checkpoint(ckpt_path)
        model = manifest.model
        found = (model.n_layer, model.n_embd, model.vocab_size)
        expected = (ckpt.config.n_layer, ckpt.config.n_embd, ckpt.config.vocab_size)
        if found != expected:
            raise RwkvExportError(
                f"'{source}' is a {found[0]} x {found[1]} (vocab {found[2]}) export but checkpoint '{ckpt_path}' "
                f"is {expected[0]} x {expected[1]} (vocab {expected[2]})"
            )
        dtype = manifest.dtype
        other = {d: f"SOURCE is a {dtype} export (give the checkpoint to test {d} too)" for d in ("float32", "float16") if d != dtype}
        return ckpt, {dtype: path, **other}
    if checkpoint is not None:
        raise RwkvExportError("--checkpoint is for an exported SOURCE directory; SOURCE here is already a checkpoint")
    from rwkv_export.export import export_checkpoint

    ckpt = load_checkpoint(source)
    exports: dict[str, Path | str] = {}
    for dtype in dtypes:
        out = Path(export_root) / dtype
        progress(f"exporting {dtype} graphs (all logits) to {out}")
        exports[dtype] = export_checkpoint(
            ckpt, out, dtype=dtype, all_logits=True, force=force, progress=lambda m: progress(f"  {m}")
        ).directory
    return ckpt, exports


COMMANDS = [verify]
