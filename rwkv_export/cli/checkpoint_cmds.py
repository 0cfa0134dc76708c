"""Verbs on checkpoints: info, make-checkpoint, convert."""

from __future__ import annotations

import json

import click

from rwkv_export.checkpoint.make import DEFAULT_HEAD_SIZE, DEFAULT_LORA
from rwkv_export.checkpoint.versions import KNOWN_VERSIONS
from rwkv_export.cli.options import (
    SEED,
    allow_nonfinite_flag,
    checkpoint_arg,
    examples,
    force_flag,
    json_flag,
    shown_option,
)


@click.command(epilog=examples("rwkv-export info model.pth", "rwkv-export info tiny-rwkv-4v0-660K-FP32.bin --json"))
@checkpoint_arg
@json_flag
@click.option("--scan", is_flag=True, help="Also read every tensor and refuse NaN / Inf (the headers alone answer the rest).")
@allow_nonfinite_flag
def info(checkpoint: str, as_json: bool, scan: bool, allow_nonfinite: bool) -> None:
    """Describe CHECKPOINT: format, RWKV version, sizes, dtype, parameter count, bytes.

    Reads headers only (.safetensors, shard indexes, .pth): instant at any size."""
    from rwkv_export.checkpoint import open_checkpoint

    ckpt = open_checkpoint(checkpoint, allow_nonfinite=allow_nonfinite)
    if scan:
        for key in ckpt.weights:  # the store refuses NaN / Inf as it reads, unless allowed
            ckpt.weights[key]
    cfg = ckpt.config
    facts = {
        "path": str(ckpt.path),
        "format": ckpt.format,
        "rwkv_version": cfg.version,
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "vocab_size": cfg.vocab_size,
        "ffn_size": cfg.ffn_size,
        "dtype": cfg.dtype,
        "parameters": ckpt.parameter_count,
    }
    if cfg.n_head is not None:  # RWKV-5/6/7: the width is split into heads
        facts.update(n_head=cfg.n_head, head_size=cfg.head_size)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        shown = f"{value:,}" if key == "parameters" else value
        click.echo(f"{key:<{width}}  {shown}")


@click.command(
    "make-checkpoint",
    epilog=examples(
        "rwkv-export make-checkpoint --layers 12 --embd 768 --vocab 50277 -o rwkv4-169m-random.pth",
        "rwkv-export make-checkpoint --version 6 --layers 12 --embd 768 --vocab 65536 -o rwkv6-169m-random.pth",
        "rwkv-export make-checkpoint --version 7 --layers 2 --embd 64 --head-size 16 --vocab 256 --seed 1 -o tiny7.safetensors",
    ),
)
@shown_option("--version", "version", type=click.Choice(KNOWN_VERSIONS), default="4", help="RWKV version (architecture).")
@click.option("--layers", type=click.IntRange(1, 1024), required=True, help="Number of layers (n_layer).")
@click.option("--embd", type=click.IntRange(1, 65536), required=True, help="Embedding width (n_embd).")
@click.option("--vocab", type=click.IntRange(1, 1 << 22), required=True, help="Vocabulary size.")
@click.option(
    "--ffn",
    type=click.IntRange(1, 1 << 20),
    default=None,
    help="Channel-mixing width (default 4 x embd; RWKV-6: 3.5 x embd rounded down to a multiple of 32).",
)
@click.option(
    "--head-size",
    type=click.IntRange(1, 4096),
    default=None,
    help=f"RWKV-5/6/7: channels per head; must divide --embd [default: {DEFAULT_HEAD_SIZE}].",
)
@click.option(
    "--lora",
    type=click.IntRange(1, 4096),
    default=None,
    help=f"RWKV-6/7: rank of every LoRA matrix pair (v6 mix and decay, v7 w/a/v/g) [default: {DEFAULT_LORA}].",
)
@shown_option("--seed", type=SEED, default=0, help="Random seed, 0 .. 2**64-1 (same seed, same weights).")
@shown_option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", help="Storage dtype.")
@click.option("-o", "--output", type=click.Path(path_type=str), required=True, help="Output file: .pth or .safetensors.")
@force_flag
def make_checkpoint(
    version: str,
    layers: int,
    embd: int,
    vocab: int,
    ffn: int | None,
    head_size: int | None,
    lora: int | None,
    seed: int,
    dtype: str,
    output: str,
    force: bool,
) -> None:
    """Write a random RWKV checkpoint of any version with realistic scales (for tests and benchmarks).
    A .safetensors output is written one tensor at a time (a 7B-shaped checkpoint in bounded memory)."""
    import math
    import sys
    from pathlib import Path

    import torch

    from rwkv_export.checkpoint import Checkpoint, save_checkpoint
    from rwkv_export.checkpoint.lazy import write_safetensors
    from rwkv_export.checkpoint.make import random_checkpoint_stream
    from rwkv_export.checkpoint.versions import expected_shapes
    from rwkv_export.errors import RwkvExportError
    from rwkv_export.fileio import refuse_existing

    path = Path(output)
    if path.suffix.lower() not in (".pth", ".pt", ".safetensors"):
        raise RwkvExportError(f"output '{output}' must end in .pth or .safetensors")
    refuse_existing(path, force)
    torch_dtype = getattr(torch, dtype)
    config, tensors = random_checkpoint_stream(version, layers, embd, vocab, ffn, head_size, lora, seed, torch_dtype)
    shapes, _ = expected_shapes(config)
    if path.suffix.lower() == ".safetensors":  # streamed: one tensor in memory at a time, any size
        write_safetensors(path, {k: (s, torch_dtype) for k, s in shapes.items()}, tensors, bar=sys.stderr.isatty())
    else:  # torch.save takes the whole state dict
        save_checkpoint(Checkpoint(config, dict(tensors), "random", path), path)
    n = sum(math.prod(s) for s in shapes.values())
    heads = f", heads {config.n_head} x {config.head_size}" if config.n_head is not None else ""
    click.echo(f"wrote {path} (RWKV-{version}, {layers} x {embd}{heads}, vocab {vocab}, {n:,} parameters, {dtype})", err=True)


@click.command(
    epilog=examples(
        "rwkv-export convert tiny-rwkv-4v0-660K-FP32.bin -o tiny.pth",
        "rwkv-export convert model.pth -o hf-dir --format hf",
    )
)
@checkpoint_arg
@click.option("-o", "--output", type=click.Path(path_type=str), required=True, help="Output file or directory.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pth", "safetensors", "hf", "rwkvcpp", "rwkvcpp-fp16"]),
    default=None,
    help="Output format (default: from the suffix; a path without suffix is an HF directory).",
)
@force_flag
@allow_nonfinite_flag
def convert(checkpoint: str, output: str, fmt: str | None, force: bool, allow_nonfinite: bool) -> None:
    """Convert CHECKPOINT between .pth, .safetensors, HF directory and rwkv.cpp formats (to
    .safetensors one tensor at a time, any size)."""
    import sys
    from pathlib import Path

    from rwkv_export.checkpoint import Checkpoint, open_checkpoint, save_checkpoint
    from rwkv_export.checkpoint.lazy import write_safetensors
    from rwkv_export.fileio import refuse_existing

    ckpt = open_checkpoint(checkpoint, allow_nonfinite=allow_nonfinite)
    refuse_existing(Path(output), force)
    if (fmt or ("safetensors" if Path(output).suffix.lower() == ".safetensors" else None)) == "safetensors":
        # streamed: one tensor in memory at a time (NaN / Inf refused as each is read, unless allowed)
        layout = {k: (ckpt.shape(k), ckpt.dtype(k)) for k in ckpt.weights}
        write_safetensors(Path(output), layout, ((k, ckpt.weights[k].contiguous()) for k in layout), bar=sys.stderr.isatty())
        written = "safetensors"
    else:
        ckpt = Checkpoint(ckpt.config, {k: ckpt.weights[k] for k in ckpt.weights}, ckpt.format, ckpt.path)
        written = save_checkpoint(ckpt, output, fmt)
    click.echo(f"wrote {output} ({written}, RWKV-{ckpt.config.version})", err=True)


COMMANDS = [info, make_checkpoint, convert]
