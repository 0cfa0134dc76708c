"""The `export` verb: checkpoint -> DIR with prefill.onnx, step.onnx and manifest.json."""

from __future__ import annotations

import click

from rwkv_export.ops.registry import op_spec
from rwkv_export.cli.options import allow_nonfinite_flag, checkpoint_arg, examples, force_flag, quiet_flag
from rwkv_export.export import ALL_FORMS


def progress_printer(quiet: bool):  # type: ignore[no-untyped-def]
    def show(message: str) -> None:
        if not quiet:
            click.echo(f"[rwkv-export] {message}", err=True)

    return show


@click.command(epilog=examples(
    "rwkv-export export model.pth -o out/",
    "rwkv-export export tiny-rwkv-4v0-660K-FP16.bin -o out-fp16 --dtype float16 --all-logits",
    "rwkv-export export RWKV-4-Pile-169M.pth -o out --tokenizer 20B_tokenizer.json --force",
))
@checkpoint_arg
@click.option("-o", "--output", type=click.Path(path_type=str), required=True, help="Output directory (must not exist unless --force).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Weights and activations dtype (WKV and the state stay float32).")
@click.option("--opset", type=click.IntRange(18, 30), default=None, help="ONNX opset (default: the exporter's).")
@click.option("--all-logits", is_flag=True, help="Prefill returns logits for every position, not only the last.")
@click.option("--wkv-form", type=click.Choice(ALL_FORMS), default=None,
              help=f"Body of the WKV op's ONNX function that ONNX Runtime runs (default: {op_spec('WKV4').default_body} for RWKV-4, "
                   f"the fastest measured for batch-1 prefill; chunked for RWKV-5/6, scan for RWKV-7).")
@click.option("--tokenizer", type=click.Path(path_type=str), default=None, help="tokenizer.json to ship with the export.")
@force_flag
@allow_nonfinite_flag
@quiet_flag
def export(checkpoint: str, output: str, dtype: str, opset: int | None, all_logits: bool, wkv_form: str | None,
           tokenizer: str | None, force: bool, allow_nonfinite: bool, quiet: bool) -> None:
    """Export CHECKPOINT to ONNX: prefill and step graphs with rwkv::WKV4 (RWKV-4) or WKV5/6/7 custom nodes."""
    from rwkv_export.checkpoint import load_checkpoint
    from rwkv_export.export import export_checkpoint

    source = load_checkpoint(checkpoint, allow_nonfinite=True) if allow_nonfinite else checkpoint
    result = export_checkpoint(source, output, dtype=dtype, opset=opset, all_logits=all_logits, force=force,
                               wkv_form=wkv_form, tokenizer=tokenizer, progress=progress_printer(quiet))
    click.echo(str(result.directory))


COMMANDS = [export]
