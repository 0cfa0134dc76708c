"""A tiny ONNX graph builder and the pieces the WKV function bodies share (custom_ops/wkv*_onnx.py).

Value names are numbered from one counter that `Builder.restart_names()` resets at the start of every
FunctionProto, so the same code always builds byte-identical functions (the manifest fingerprints them).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper

MIN_OPSET = 18  # Reduce* take axes as an input from 18 on; the bodies are written that way
EXP_FLOOR = -60.0  # exp arguments relative to a sum's largest term are clamped here (ORT's Exp slow path)
FLOAT = TensorProto.FLOAT
SEQ_FIRST_5D = [1, 0, 2, 3, 4]  # [B, T, H, *, *] <-> [T, B, H, *, *]


class Builder:
    """Collects nodes with unique value names (`prefix` keeps subgraph names apart)."""

    _ids = itertools.count()

    @classmethod
    def restart_names(cls) -> None:
        """Number values from 0 again: at the start of each FunctionProto (its own name scope), so
        the same code always builds byte-identical functions (the manifest fingerprints them)."""
        cls._ids = itertools.count()

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._renamed: dict[str, str] = {}

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        """Append one single-output node; returns its output's name."""
        return self.ops(op_type, *inputs, outputs=1, **attrs)[0]

    def ops(self, op_type: str, *inputs: str, outputs: int, **attrs) -> list[str]:
        """Append one node with `outputs` outputs; returns their names."""
        n = next(self._ids)
        outs = [f"{self.prefix}{op_type.lower()}{n}_{j}" for j in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs

    def const(self, value, dtype=np.float32) -> str:
        return self.op("Constant", value=onnx.numpy_helper.from_array(np.asarray(value, dtype)))

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)

    def rename(self, value: str, name: str) -> None:
        """Give `value` the fixed name `name` (graph/function outputs need fixed names).

        Renames the producing node's output in place where it can: in a Scan body every Identity
        is one more op per token. A value from outside (an input) or already renamed gets an
        Identity.
        """
        if value in self._renamed or not any(value in n.output for n in self.nodes):
            self.nodes.append(helper.make_node("Identity", [self._renamed.get(value, value)], [name]))
            return
        for node in self.nodes:
            for field in (node.input, node.output):
                for j, x in enumerate(field):
                    if x == value:
                        field[j] = name
        self._renamed[value] = name


def float_inputs(names) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(n, FLOAT, None) for n in names]


def to_float(g: Builder, x: str) -> str:
    return g.op("Cast", x, to=FLOAT)


def decay(g: Builder, w_raw: str) -> str:
    """w = exp(-exp(w_raw)) in float32 (never float16: a w near 1 would round to 1)."""
    return g.op("Exp", g.op("Neg", g.op("Exp", to_float(g, w_raw))))


class Axes:
    """int64 axis constants [-1] and [-2], built once in the function scope."""

    def __init__(self, g: Builder):
        self.last, self.second_last = g.ints(-1), g.ints(-2)


def scan_over_time(
    g: Builder, op: str, body: Builder, state_in: str, carried: str, scanned: dict[str, str], y: str, state_out: str
) -> tuple[str, str]:
    """Run `body` as a Scan: `carried` is the body's state input name, `scanned` maps the body's
    per-token input names to outer 5-D tensors [B, T, H, *, *] (already shaped as the body uses
    them: rows, columns). Returns (y [B, T, H, *, *] as the body's y per token, state_out)."""
    outs = [f"{body.prefix}state_out", f"{body.prefix}y"]
    body.rename(state_out, outs[0])
    body.rename(y, outs[1])
    graph = helper.make_graph(body.nodes, f"{op.lower()}_scan_body", float_inputs([carried, *scanned]), float_inputs(outs))
    seq = [g.op("Transpose", x, perm=SEQ_FIRST_5D) for x in scanned.values()]
    s_out, ys = g.ops("Scan", state_in, *seq, outputs=2, body=graph, num_scan_inputs=len(seq))
    return g.op("Transpose", ys, perm=SEQ_FIRST_5D), s_out


def if_single_token(g: Builder, op: str, k: str, scan, chunked) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """T == 1 (every step graph) takes the scan body, longer inputs the chunked one: an If."""
    branches = []
    for name, build in (("scan", scan), ("chunked", chunked)):
        b = Builder(f"{op.lower()}_{name}_")
        names = [f"{b.prefix}y", f"{b.prefix}state_out"]
        for o, n in zip(build(b), names):
            b.rename(o, n)
        branches.append(helper.make_graph(b.nodes, f"{op.lower()}_{name}", [], float_inputs(names)))
    T = g.op("Slice", g.op("Shape", k), g.ints(1), g.ints(2))
    return g.ops("If", g.op("Equal", T, g.ints(1)), outputs=2, then_branch=branches[0], else_branch=branches[1])
