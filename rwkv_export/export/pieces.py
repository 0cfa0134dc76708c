"""Trace the model's pieces once each, with the weights as graph inputs: export time is one block's.

`forward_sequence` is three pieces (model/base.py): `embed` (tokens -> residual stream), `layer` (one
block on the stream and its slice of the state) and `logits`. Each is traced by torch.onnx (dynamo)
on its own, its weights passed as inputs rather than held as constants: the example weights are
`torch.empty` tensors (never written, so never resident: tracing a 7B model's piece costs no memory)
and the traced graph names each weight input after the model's buffer. `layer` is traced for block 0
and, when there is one, block 1, which stands for every later block (a layer may branch on `i == 0`
only: RWKV-7's v_first is made in block 0 and read by the others). assemble.py stamps the pieces
into the prefill graph and binds each weight input to an initializer streamed from the checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import onnx
import torch
from torch.export import Dim

from rwkv_export.errors import RwkvExportError, first_line
from rwkv_export.model import RWKVModel
from rwkv_export.model.state import OUTPUT_SUFFIX
from rwkv_export.ops.registry import DOMAIN, DOMAIN_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION, op_spec
from rwkv_export.versions import state_shapes, version_info

EMBED_WEIGHTS = ("emb_weight", "blocks_0_ln0_weight", "blocks_0_ln0_bias")
LOGITS_WEIGHTS = ("ln_out_weight", "ln_out_bias", "head_weight")
STREAM = "x"  # the residual stream between pieces: embed's output, a layer's and logits' input
STREAM_OUT = "x_next"  # a layer's output stream


@dataclass(frozen=True)
class Piece:
    """One traced piece: its ONNX graph's inputs are `activations` then `weights` (buffer names)."""

    name: str
    proto: onnx.ModelProto
    activations: tuple[str, ...]
    weights: tuple[str, ...]
    outputs: tuple[str, ...]


def symbolic_wkv(op: str):  # type: ignore[no-untyped-def]
    """An emitter with the signature of the op's torch definition (custom_ops/wkvN.py): during export
    it becomes one rwkv::<op> node, its outputs float32 and shaped as the registry's `shape_like`."""
    spec = op_spec(op)
    like = [spec.inputs.index(name) for name in spec.shape_like]

    def emit(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.onnx.ops.symbolic_multi_out(
            f"{DOMAIN}::{op}", list(inputs), {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION},
            dtypes=[torch.float32] * len(like), shapes=[inputs[i].shape for i in like], version=DOMAIN_VERSION,
        ))  # fmt: skip

    return emit


class _PieceModule(torch.nn.Module):
    """forward(*activations, *weights): the piece's function with the weights bound by name."""

    def __init__(self, fn: Any, n_activations: int, weights: tuple[str, ...]) -> None:
        super().__init__()
        self.fn, self.n, self.names = fn, n_activations, weights

    def forward(self, *args):  # type: ignore[no-untyped-def]
        w = SimpleNamespace(**dict(zip(self.names, args[self.n :])))
        return self.fn(*args[: self.n], w)


def trace_pieces(model: RWKVModel, opset: int | None, all_logits: bool) -> dict[str, Piece]:
    """embed, layer0 (and layer1 when the model has two or more blocks) and logits of `model` (its
    buffers may be meta tensors: only their names, shapes and dtypes are read)."""
    cfg = model.config
    batch, seq = Dim("batch", min=1), Dim("seq", min=1)
    B, T = 2, 3  # example sizes > 1 so the exporter does not specialise the dynamic dims
    x = torch.zeros(B, T, cfg.n_embd, dtype=model.dtype)
    pieces = {}
    top = {name: getattr(model, name) for name in (*EMBED_WEIGHTS, *LOGITS_WEIGHTS)}
    pieces["embed"] = _trace(
        "embed", lambda tokens, w: model.embed(tokens, w), (torch.zeros(B, T, dtype=torch.long),), ("tokens",),
        ({0: batch, 1: seq},), {n: top[n] for n in EMBED_WEIGHTS}, (STREAM,), opset,
    )  # fmt: skip
    pieces["logits"] = _trace(
        "logits", lambda stream, w: model.logits(stream, all_logits, w), (x,), (STREAM,),
        ({0: batch, 1: seq},), {n: top[n] for n in LOGITS_WEIGHTS}, ("logits",), opset,
    )  # fmt: skip
    shapes = state_shapes(cfg, B)  # this layer's slices: the state without its layer axis
    slices = tuple(torch.zeros(s[1:], dtype=torch.float32) for s in shapes.values())
    names = tuple(shapes)
    ctx: dict[str, torch.Tensor] = {}
    original = model.wkv
    model.wkv = symbolic_wkv(version_info(cfg.version).op)
    try:
        for i in range(min(cfg.n_layer, 2)):
            block = model.blocks[i]
            weights = {n: b for n, b in block.named_buffers()}
            ctx_in = tuple(sorted(ctx))
            ctx_out: list[str] = []

            def layer(*args: Any, i: int = i, ctx_in: tuple[str, ...] = ctx_in, ctx_out: list[str] = ctx_out) -> tuple[torch.Tensor, ...]:
                stream, state, w = args[0], args[1 : 1 + len(names)], args[-1]
                context = dict(zip(ctx_in, args[1 + len(names) : -1]))
                out, new = model.layer(i, w, stream, tuple(state), context)
                ctx_out[:] = sorted(set(context) - set(ctx_in))
                return (out, *new, *(context[k] for k in ctx_out))

            example_ctx = tuple(ctx[k] for k in ctx_in)
            # run once on meta tensors (no data, no memory) to learn the context this layer makes
            meta = [t.to("meta") for t in (x, *slices, *example_ctx)]
            model.wkv = original  # the reference op runs on meta tensors; the emitter does not
            with torch.no_grad():
                result = layer(
                    *meta, SimpleNamespace(**{n: torch.empty(b.shape, dtype=b.dtype, device="meta") for n, b in weights.items()})
                )
            made = {k: torch.zeros(t.shape, dtype=t.dtype) for k, t in zip(ctx_out, result[1 + len(names) :])}
            model.wkv = symbolic_wkv(version_info(cfg.version).op)
            outputs = (STREAM_OUT, *(n + OUTPUT_SUFFIX for n in names), *ctx_out)
            pieces[f"layer{i}"] = _trace(
                f"layer{i}", layer, (x, *slices, *example_ctx), (STREAM, *names, *ctx_in),
                ({0: batch, 1: seq}, *({0: batch} for _ in names), *({0: batch, 1: seq} for _ in ctx_in)),
                weights, outputs, opset,
            )  # fmt: skip
            ctx.update(made)
    finally:
        model.wkv = original
    return pieces


@contextlib.contextmanager
def _quiet_torch_onnx_logs():  # type: ignore[no-untyped-def]
    """The exporter logs unrelated registry warnings (e.g. torchvision ops); keep stderr readable."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _trace(
    name: str,
    fn: Any,
    activations: tuple[torch.Tensor, ...],
    activation_names: tuple[str, ...],
    dynamic: tuple[dict[int, Any], ...],
    weights: dict[str, torch.Tensor],
    outputs: tuple[str, ...],
    opset: int | None,
) -> Piece:
    """Export fn(*activations, w) with w's tensors as inputs; the example weights are never written."""
    examples = tuple(torch.empty(t.shape, dtype=t.dtype) for t in weights.values())
    module = _PieceModule(fn, len(activations), tuple(weights))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_torch_onnx_logs():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (*activations, *examples), dynamo=True, dynamic_shapes=((*dynamic, *(None for _ in examples)),),
                opset_version=opset, input_names=[*activation_names, *weights], output_names=list(outputs),
                optimize=True, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter's errors are long; keep the first line
        raise RwkvExportError(f"torch.onnx export of the model's {name} failed: {first_line(exc, 1000)[:300]}") from exc
    assert program is not None
    return Piece(name, program.model_proto, activation_names, tuple(weights), outputs)
