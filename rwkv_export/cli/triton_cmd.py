"""`rwkv-export triton DIR -o REPO`: a Triton Inference Server model repository for an export.

Two sequence models with implicit state (prefill and step graphs); see rwkv_export/serving/triton.py
and the README's Serving section for the request flow. What Triton cannot express (a TensorRT engine
that needs our Python plugin, batching TensorRT engines whose state has its batch on axis 1) is a
one-line error, exit 2.
"""

from __future__ import annotations

import click

from rwkv_export.cli.options import examples, force_flag, quiet_flag, shown_option


@click.command(
    "triton",
    epilog=examples(
        "rwkv-export triton out/ -o model_repository",
        "rwkv-export triton out/ -o model_repository --max-batch-size 32 --name rwkv7",
        "rwkv-export triton out/ -o trt_repository --backend tensorrt --max-batch-size 0 --force",
        "tritonserver --model-repository model_repository",
    ),
)
@click.argument("model_dir", metavar="DIR", type=click.Path(path_type=str))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=str), help="The model repository directory to write.")
@shown_option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt"]),
    default="onnxruntime",
    help="Triton backend: the ONNX graphs (onnxruntime) or the engines `rwkv-export build` made (tensorrt).",
)
@shown_option(
    "--max-batch-size",
    type=click.IntRange(0, 1 << 16),
    default=8,
    help="Triton's max_batch_size: sequences run together per execution (0: no batching).",
)
@shown_option("--name", default="rwkv", help="Model name prefix: NAME_prefill and NAME_step.")
@shown_option(
    "--idle-seconds",
    type=click.FloatRange(0.001),
    default=600.0,
    help="How long a sequence may wait for its next request before Triton drops its state.",
)
@force_flag
@quiet_flag
def triton(model_dir: str, out: str, backend: str, max_batch_size: int, name: str, idle_seconds: float, force: bool, quiet: bool) -> None:
    """Write a Triton model repository serving the export in DIR (sequence batching, implicit state)."""
    from rwkv_export.manifest import Manifest
    from rwkv_export.serving.triton import RepoOptions, write_repository

    options = RepoOptions(backend, max_batch_size, name, idle_seconds)
    repo = write_repository(Manifest.read(model_dir), out, options, force)
    if not quiet:
        click.echo(
            f"[triton] wrote {repo}: {options.model_name('prefill')}, {options.model_name('step')} "
            f"({backend}, max_batch_size {max_batch_size})",
            err=True,
        )
    click.echo(str(repo))


COMMANDS = [triton]
