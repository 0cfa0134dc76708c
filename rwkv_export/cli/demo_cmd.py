"""`rwkv-export demo`: the whole pipeline on a built-in model, no download.

A deterministic random RWKV-4 (4 x 128, byte-level vocab 256, seed 0, trained-like scales) is
exported to prefill/step ONNX graphs, run in ONNX Runtime for a short greedy generation, and checked
against the float64 reference: the same verify machinery as `rwkv-export verify`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from rwkv_export.cli.options import examples, path_option, shown_option

DEMO_SHAPE = {"n_layer": 4, "n_embd": 128, "vocab_size": 256}
DEMO_SEED = 0


@click.command(epilog=examples("rwkv-export demo", "rwkv-export demo --out demo-export --prompt 'Hello' --max-tokens 24"))
@path_option("--out", help="Keep the exported model here (default: a temporary directory).")
@shown_option("--prompt", default="RWKV is an RNN with transformer-level quality.", help="Prompt text (bytes).")
@shown_option("--max-tokens", type=click.IntRange(1, 512), default=16, help="Tokens to generate.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.pass_context
def demo(ctx: click.Context, out: str | None, prompt: str, max_tokens: int, force: bool) -> None:
    """Export, run and verify a built-in RWKV-4 model end to end (no download)."""
    with tempfile.TemporaryDirectory(prefix="rwkv-demo-") as tmp:
        directory = Path(out) if out else Path(tmp) / "export"
        ok = _demo(directory, prompt, max_tokens, force)
    if not ok:
        ctx.exit(1)


def _say(message: str) -> None:
    click.echo(f"[demo] {message}", err=True)


def _demo(directory: Path, prompt: str, max_tokens: int, force: bool) -> bool:
    import numpy as np

    from rwkv_export.checkpoint import Checkpoint
    from rwkv_export.checkpoint.random import random_weights
    from rwkv_export.export import export_checkpoint
    from rwkv_export.generate import Sampling, generate
    from rwkv_export.parity import backends, report, scenario, verify_all
    from rwkv_export.runtime import ExportedModel
    from rwkv_export.tokenizer import ByteTokenizer

    config, weights = random_weights("4", DEMO_SHAPE["n_layer"], DEMO_SHAPE["n_embd"], DEMO_SHAPE["vocab_size"], seed=DEMO_SEED)
    ckpt = Checkpoint(config, weights, "built-in", directory / "built-in")
    _say(
        f"1/4 built-in model: RWKV-{config.version}, {config.n_layer} x {config.n_embd}, byte vocab {config.vocab_size}, "
        f"seed {DEMO_SEED} ({ckpt.parameter_count:,} parameters, random weights with trained-like scales)"
    )
    _say(f"2/4 exporting prefill.onnx + step.onnx (float32, rwkv::WKV4 custom op) to {directory}")
    export_checkpoint(ckpt, directory, all_logits=True, force=force, progress=lambda m: _say(f"    {m}"))

    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(prompt)
    _say(f"3/4 greedy generation in ONNX Runtime from {len(ids)} prompt bytes")
    with ExportedModel(directory) as model:
        got = np.stack(list(generate(model, [ids], max_tokens, Sampling(temperature=0.0))), axis=1)[0]
    with backends.TorchBackend(ckpt, "float64") as oracle:
        want = np.stack(list(generate(oracle, [ids], max_tokens, Sampling(temperature=0.0))), axis=1)[0]
    click.echo(f"prompt:    {prompt!r}")
    click.echo(f"generated: {tokenizer.decode(got.tolist())!r}  (random weights: bytes, not prose)")
    same = bool((got == want).all())
    click.echo(f"greedy tokens equal to the float64 reference's: {'yes' if same else 'NO'} ({len(got)} tokens)")

    _say("4/4 parity against the float64 reference (prefill, steps, chunked prefill)")
    scen = scenario.Scenario.random(config.vocab_size, batch=2, seq=16, steps=8, seed=0)
    names = backends.select(["torch-float32", "ort-cpu-float32"])
    results = verify_all(
        ckpt, {"float32": directory, "float16": "the demo exports float32 only"}, names, scen, progress=lambda m: _say(f"    {m}")
    )
    click.echo(report.table(results))
    passed = same and not any(r.failed for r in results)
    click.echo("demo: OK, the exported graphs compute what the checkpoint computes" if passed else "demo: FAILED (see above)")
    return passed


COMMANDS = [demo]
