"""The `export` verb: checkpoint -> DIR with prefill.onnx, step.onnx and manifest.json."""

from __future__ import annotations

import sys

import click

from rwkv_export.cli.options import (
    allow_nonfinite_flag,
    checkpoint_arg,
    examples,
    force_flag,
    path_option,
    progress_printer,
    quiet_flag,
    shown_option,
)
from rwkv_export.errors import RwkvExportError
from rwkv_export.export import ALL_FORMS
from rwkv_export.export.finalize import EXTERNAL_DATA_THRESHOLD
from rwkv_export.export.quantize import DEFAULT_ACCURACY_LEVEL, DEFAULT_BLOCK_SIZE, PRECISIONS, QUANT_FORMATS, ROLES, QuantSpec
from rwkv_export.ops.registry import op_spec

# --weights -> export_checkpoint's external_data_threshold (bytes of weights above which they are shared)
WEIGHT_LAYOUTS = {"auto": EXTERNAL_DATA_THRESHOLD, "shared": 0, "inline": 1 << 62}


def _policy_text(scheme: str) -> str:
    return ", ".join(f"{role} {QuantSpec(scheme).precision(role)}" for role in ROLES)


@click.command(
    epilog=examples(
        "rwkv-export export model.pth -o out/",
        "rwkv-export export tiny-rwkv-4v0-660K-FP16.bin -o out-fp16 --dtype float16 --all-logits",
        "rwkv-export export RWKV-4-Pile-169M.pth -o out --tokenizer 20B_tokenizer.json --force",
        "rwkv-export export model.pth -o out-int4 --quantize int4 --all-logits",
    )
)
@checkpoint_arg
@click.option("-o", "--output", type=click.Path(path_type=str), required=True, help="Output directory (must not exist unless --force).")
@shown_option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    default="float32",
    help="Weights and activations dtype (WKV and the state stay float32).",
)
@click.option("--opset", type=click.IntRange(18, 30), default=None, help="ONNX opset (default: the exporter's).")
@click.option("--all-logits", is_flag=True, help="Prefill returns logits for every position, not only the last.")
@click.option(
    "--wkv-form",
    type=click.Choice(ALL_FORMS),
    default=None,
    help=f"Body of the WKV op's ONNX function that ONNX Runtime runs (default: {op_spec('WKV4').default_body} for RWKV-4, "
    f"the fastest measured for batch-1 prefill; chunked for RWKV-5/6, scan for RWKV-7).",
)
@path_option("--tokenizer", help="tokenizer.json to ship with the export.")
@click.option(
    "--quantize",
    type=click.Choice(["int8", "int4"]),
    default=None,
    help="Block-wise weight-only quantization of the matrices, head and embedding (per --policy); "
    "activations, WKV and the state stay float32.",
)
@click.option(
    "--block-size",
    type=int,
    default=None,
    help=f"Weights per quantization block along the input dimension (a power of two >= 16 dividing every "
    f"matrix's input size; default {DEFAULT_BLOCK_SIZE}, measured: see README).",
)
@click.option(
    "--symmetric/--asymmetric",
    default=None,
    help="Symmetric blocks (scale only) or asymmetric (scale and zero point). Default: asymmetric for matmulnbits "
    "(measured more accurate at int4), symmetric for qdq (TensorRT takes signed weights without zero points: "
    "the TensorRT-RTX parser refuses the UINT4 weights of an asymmetric int4 export).",
)
@shown_option(
    "--quant-format",
    type=click.Choice(QUANT_FORMATS),
    default="matmulnbits",
    help="matmulnbits: ONNX Runtime's MatMulNBits op (CPU/CUDA kernels); qdq: blocked DequantizeLinear -> MatMul (opset 21) for TensorRT.",
)
@click.option(
    "--accuracy-level",
    type=click.IntRange(0, 4),
    default=None,
    help="MatMulNBits' accuracy_level: 0 computes in float32 (int8 weights then run ~14x slower than float32 on "
    "ORT 1.32's CPU kernels), 4 rounds activations to int8 per block inside the kernel (measured 3.4x faster than "
    "float32 for int8 weights, 4.3x for int4; its accuracy cost: README). Default 4.",
)
@click.option(
    "--policy",
    default=None,
    help=f"Comma-separated ROLE=PRECISION overrides of the measured per-role policy (roles: {', '.join(ROLES)}; "
    f"precisions: {', '.join(PRECISIONS)}). Defaults: int8 "
    + _policy_text("int8")
    + "; int4 "
    + _policy_text("int4")
    + ". lora = the low-rank time-mix/decay/a/v/g matrices of RWKV-6/7; head = the output projection.",
)
@shown_option(
    "--weights",
    "weights_layout",
    type=click.Choice(["auto", "shared", "inline"]),
    default="auto",
    help="Where the weights go: shared = one weights.data both graphs read; inline = inside each graph file "
    "(self-contained, up to 2 GB); auto = shared above 256 MiB of weights.",
)
@force_flag
@allow_nonfinite_flag
@quiet_flag
def export(
    checkpoint: str,
    output: str,
    dtype: str,
    opset: int | None,
    all_logits: bool,
    wkv_form: str | None,
    tokenizer: str | None,
    quantize: str | None,
    block_size: int | None,
    symmetric: bool | None,
    quant_format: str,
    accuracy_level: int | None,
    policy: str | None,
    weights_layout: str,
    force: bool,
    allow_nonfinite: bool,
    quiet: bool,
) -> None:
    """Export CHECKPOINT to ONNX: prefill and step graphs with rwkv::WKV4 (RWKV-4) or WKV5/6/7 custom nodes."""
    from rwkv_export.checkpoint import open_checkpoint
    from rwkv_export.export import export_checkpoint

    spec = quant_spec(quantize, block_size, symmetric, quant_format, policy, accuracy_level)
    source = open_checkpoint(checkpoint, allow_nonfinite=True) if allow_nonfinite else checkpoint
    result = export_checkpoint(
        source,
        output,
        dtype=dtype,
        opset=opset,
        all_logits=all_logits,
        force=force,
        wkv_form=wkv_form,
        tokenizer=tokenizer,
        progress=progress_printer(quiet),
        quantize=spec,
        progress_bar=not quiet and sys.stderr.isatty(),
        external_data_threshold=WEIGHT_LAYOUTS[weights_layout],
    )
    click.echo(str(result.directory))


def quant_spec(
    quantize: str | None,
    block_size: int | None,
    symmetric: bool | None,
    quant_format: str,
    policy: str | None,
    accuracy_level: int | None = None,
) -> QuantSpec | None:
    """The QuantSpec the options ask for; quantization options without --quantize are refused."""
    if quantize is None:
        if (
            block_size is not None
            or symmetric is not None
            or quant_format != "matmulnbits"
            or policy is not None
            or accuracy_level is not None
        ):
            raise RwkvExportError(
                "--block-size, --symmetric, --quant-format, --accuracy-level and --policy apply to a quantized export: "
                "add --quantize int8|int4"
            )
        return None
    overrides = None
    if policy is not None:
        pairs = [item.strip().partition("=") for item in policy.split(",") if item.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise RwkvExportError(f"--policy '{policy}': expected ROLE=PRECISION pairs, e.g. head=int8,lora=float")
        resolved = {role: QuantSpec(quantize).precision(role) for role in ROLES} | {r.strip(): p.strip() for r, _, p in pairs}
        overrides = tuple(resolved.items())
    symmetric = quant_format == "qdq" if symmetric is None else symmetric
    level = DEFAULT_ACCURACY_LEVEL if accuracy_level is None else accuracy_level
    return QuantSpec(quantize, block_size or DEFAULT_BLOCK_SIZE, symmetric, quant_format, overrides, level)


COMMANDS = [export]
