"""The `eval` verb: perplexity, bits per byte, KL and top-1 agreement of each backend on a text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rwkv_export.cli.options import examples, json_flag, path_option, quiet_flag, shown_option
from rwkv_export.errors import RwkvExportError

BIG_MODEL_PARAMETERS = 1_000_000_000  # above this the reference runs in float32 (float64 would need 8 bytes a weight)


@click.command(
    "eval",
    epilog=examples(
        "rwkv-export eval tiny-rwkv-7v0-834K-FP32.bin out-f32 out-int8 out-int4 --text tinyshakespeare.txt --holdout 0.1",
        "rwkv-export eval out-int4 --text book.txt --max-tokens 4096 --json",
    ),
)
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--text", "text_file", type=click.Path(path_type=str), required=True, help="UTF-8 text to score.")
@shown_option(
    "--chunk",
    type=click.IntRange(1),
    default=256,
    help="Tokens per call; the state is carried between chunks, so memory does not grow with the text.",
)
@click.option("--max-tokens", type=click.IntRange(2), default=None, help="Score at most this many tokens of the slice.")
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Score only the last FRACTION of the text (0.1: the held-out last 10%% that published figures use).",
)
@shown_option("--start", type=float, default=0.0, help="Slice start, a fraction of the text's characters.")
@shown_option("--end", type=float, default=1.0, help="Slice end, a fraction of the text's characters.")
@shown_option(
    "--reference",
    type=click.Choice(["auto", "float64", "float32"]),
    default="auto",
    help="Torch reference dtype; auto: float64, float32 above 1B parameters.",
)
@path_option("--tokenizer", help="tokenizer.json or world vocab .txt (default: the export's).")
@click.option("--threads", type=click.IntRange(0), default=0, help="ONNX Runtime intra-op threads (0: ORT decides).")
@json_flag
@quiet_flag
def eval_(
    sources: tuple[str, ...],
    text_file: str,
    chunk: int,
    max_tokens: int | None,
    holdout: float | None,
    start: float,
    end: float,
    reference: str,
    tokenizer: str | None,
    threads: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Score SOURCES (a checkpoint and/or exported directories) on a text, run as an RNN.

    Reports, per backend: perplexity, bits per byte, mean and p99 KL divergence of the next-token
    distribution from the torch reference, and top-1 agreement with it. The reference is the
    checkpoint among SOURCES, else the checkpoint the first export was made from.
    """
    from rwkv_export.parity.evaluate import evaluate, read_text, tokenize

    if holdout is not None:
        if (start, end) != (0.0, 1.0):
            raise RwkvExportError("--holdout and --start/--end both choose the slice: give one of them")
        start = 1.0 - holdout
    ckpt_path, dirs = _split_sources(sources)
    tok = _tokenizer(dirs, ckpt_path, tokenizer)
    where = f"'{text_file}'" + (f" [{start:g}, {end:g})" if (start, end) != (0.0, 1.0) else "")
    text = tokenize(read_text(text_file, start, end), tok, chunk, max_tokens, where)
    ref, backends = _open(ckpt_path, dirs, reference, threads, sources)
    rows = _run(evaluate, ref, backends, text, chunk, quiet)
    report = {
        "text": {"file": text_file, "start": start, "end": end, "tokens": len(text.tokens), "bytes": text.n_bytes},
        "chunk": chunk,
        "reference": ref.name,
        "rows": rows,
    }
    click.echo(json.dumps(report, indent=2) if as_json else format_table(report))


def _split_sources(sources: tuple[str, ...]) -> tuple[str | None, list[Path]]:
    ckpts = [s for s in sources if not Path(s).is_dir() or not (Path(s) / "manifest.json").is_file()]
    if len(ckpts) > 1:
        raise RwkvExportError(f"give at most one checkpoint (got {', '.join(ckpts)}); the others must be exported directories")
    return (ckpts[0] if ckpts else None), [Path(s) for s in sources if s not in ckpts]


def _tokenizer(dirs: list[Path], ckpt_path: str | None, override: str | None) -> Any:
    from rwkv_export.tokenizer import load_tokenizer

    if override is not None or dirs:
        return load_tokenizer(dirs[0] if dirs else {}, override)
    from rwkv_export.checkpoint import load_checkpoint
    from rwkv_export.export import tokenizer_info

    assert ckpt_path is not None  # SOURCES holds a checkpoint when it holds no directory
    return load_tokenizer(tokenizer_info(load_checkpoint(ckpt_path).config.vocab_size, False))


def _open(ckpt_path: str | None, dirs: list[Path], reference: str, threads: int, sources: tuple[str, ...]) -> tuple[Any, list[Any]]:
    from rwkv_export.checkpoint import load_checkpoint
    from rwkv_export.manifest import read_manifest
    from rwkv_export.parity.backends import TorchBackend, exported_backend

    manifests = [read_manifest(d) for d in dirs]
    if ckpt_path is None:
        ckpt_path = manifests[0]["source"]["path"]
        if not Path(ckpt_path).exists():
            raise RwkvExportError(f"the reference checkpoint '{ckpt_path}' that {dirs[0]} was exported from is gone; give it among SOURCES")
    assert ckpt_path is not None
    ckpt = load_checkpoint(ckpt_path)
    ref_dtype = reference if reference != "auto" else ("float32" if ckpt.parameter_count > BIG_MODEL_PARAMETERS else "float64")
    backends: list[Any] = []
    if ckpt_path in sources and ref_dtype == "float64":
        backends.append(TorchBackend(ckpt, "float32"))
    precisions = [(m["export"].get("quantization") or {}).get("scheme") or m["dtype"] for m in manifests]
    for directory, precision in zip(dirs, precisions):
        name = f"ort-{precision}" if precisions.count(precision) == 1 else f"ort-{precision}[{directory.name}]"
        backend = exported_backend(directory, "cpu", name, threads)
        setattr(backend, "precision", precision)  # noqa: B010  (eval's label; the session knows only the graph dtype)
        backends.append(backend)
    return TorchBackend(ckpt, ref_dtype), backends


def _run(evaluate: Any, ref: Any, backends: list[Any], text: Any, chunk: int, quiet: bool) -> list[dict[str, Any]]:
    from contextlib import ExitStack

    from tqdm import tqdm  # type: ignore[import-untyped]

    with ExitStack() as stack, tqdm(total=len(text.tokens) - 1, unit="tok", disable=quiet, desc="eval", leave=False) as bar:
        for backend in (ref, *backends):
            stack.enter_context(backend)
        return evaluate(ref, backends, text, chunk, bar.update)


def format_table(report: dict[str, Any]) -> str:
    t = report["text"]
    ref = report["rows"][0]["perplexity"]
    lines = [
        (
            f"{t['file']} [{t['start']:g}, {t['end']:g}): {t['tokens']} tokens, {t['bytes']} bytes; chunk {report['chunk']}; "
            f"reference {report['reference']}"
        ),
        f"{'backend':<22} {'ppl':>9} {'vs ref':>8} {'bits/byte':>9} {'KL mean':>10} {'KL p99':>10} {'top-1':>8}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['backend']:<22} {r['perplexity']:>9.4f} {100 * (r['perplexity'] / ref - 1):>+7.2f}% {r['bits_per_byte']:>9.4f} "
            f"{r['kl_mean']:>10.3g} {r['kl_p99']:>10.3g} {100 * r['top1_agreement']:>7.2f}%"
        )
    return "\n".join(lines)


COMMANDS = [eval_]
