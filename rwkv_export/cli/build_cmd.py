"""`rwkv-export build DIR`: TensorRT / TensorRT-RTX engines for an exported model directory."""

from __future__ import annotations

import json

import click

from rwkv_export.cli.options import bounded, examples, json_flag, quiet_flag, shown_option


@click.command(
    "build",
    epilog=examples(
        "rwkv-export build out/tiny --target tensorrt-rtx",
        "rwkv-export build out/tiny --target tensorrt-rtx --compute-capability sm80 --compute-capability sm89",
        "rwkv-export build out/tiny --target tensorrt --max-batch 4 --max-seq 1024 --workspace 2G",
    ),
)
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--target",
    type=click.Choice(["tensorrt", "tensorrt-rtx"]),
    default=None,
    help="Engine flavour; default: standard TensorRT if installed, else TensorRT-RTX.",
)
@click.option(
    "--compute-capability",
    "compute_capabilities",
    multiple=True,
    metavar="SM",
    help="TensorRT-RTX build target (sm75, sm80, sm86, sm89, sm120, sm121); repeatable.",
)
@shown_option("--max-batch", type=bounded(1), default=8, help="Largest batch the engines accept.")
@shown_option("--max-seq", type=bounded(1), default=512, help="Longest prefill chunk the prefill engine accepts.")
@click.option("--workspace", type=str, default=None, metavar="BYTES", help="Builder workspace limit, e.g. 512M or 2G; default: TensorRT's.")
@shown_option(
    "--plugin",
    type=click.Choice(["auto", "python", "aot", "none"]),
    default="auto",
    help="WKV4 plugin front: python (IPluginV3), aot (TensorRT >= 10.9, no Python at run time), none (inline the ONNX function).",
)
@click.option("--graph", "graphs", multiple=True, type=click.Choice(["prefill", "step"]), help="Build only these graphs (default: both).")
@json_flag
@quiet_flag
def build(
    model_dir: str,
    target: str | None,
    compute_capabilities: tuple[str, ...],
    max_batch: int,
    max_seq: int,
    workspace: str | None,
    plugin: str,
    graphs: tuple[str, ...],
    as_json: bool,
    quiet: bool,
) -> None:
    """Build prefill.plan and step.plan from MODEL_DIR's ONNX graphs and record them in its manifest.

    One optimization profile per graph from the manifest's dynamic dims; precision follows the
    exported dtypes (strongly typed). TensorRT-RTX engines build on a machine without a GPU.
    The ONNX files must lie inside MODEL_DIR and match their sha256 in the manifest (a file fully
    hashed once is trusted while its size and modification time are unchanged; cache in
    ~/.cache/rwkv-export, RWKV_EXPORT_HASH_CACHE=0 hashes every time).
    """
    from rwkv_export import engine  # TensorRT itself is imported only in the build subprocess

    # Every option is checked before any output, so a bad one (or a missing TensorRT) is the one line.
    target = engine.resolve_target(target)
    engine.resolve_plugin(plugin, target)
    engine.normalize_compute_capabilities(compute_capabilities, target)
    options = engine.BuildOptions(
        target=target,
        compute_capabilities=compute_capabilities,
        max_batch=max_batch,
        max_seq=max_seq,
        workspace=parse_size(workspace),
        plugin=plugin,
    )
    if not quiet:
        click.echo(f"building {', '.join(graphs or engine.GRAPHS)} in {model_dir} ...", err=True)
    engines = engine.build(model_dir, options, graphs or engine.GRAPHS)
    if as_json:
        click.echo(json.dumps(engines, indent=2))
        return
    for name, entry in engines.items():
        click.echo(
            f"{name}\t{entry['file']}\t{entry['target']} {entry['tensorrt_version']}\tplugin={entry['plugin']}"
            f" ({entry['plugin_layers']} layers)\tsha256={entry['sha256'][:16]}"
        )


def parse_size(text: str | None) -> int | None:
    """'512M' / '2G' / '1048576' -> bytes."""
    from rwkv_export.errors import RwkvExportError

    if text is None:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale != 1 else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 15 or int(digits) <= 0:
        raise RwkvExportError(f"--workspace {text!r} is not a size; expected bytes or a number with K, M or G, e.g. 512M")
    return int(digits) * scale


COMMANDS = [build]
