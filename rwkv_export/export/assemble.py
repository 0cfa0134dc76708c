"""Stamp the traced pieces (pieces.py) into the prefill graph, and plan the weights it reads.

The prefill graph is embed, then for block i: Gather(state, i) of every state tensor, one copy of
the layer piece (block 0's for i = 0, block 1's for the rest) whose names carry the prefix
`blocks.<i>/`, the float16 rescale's halving where the model does it; then the logits piece, and
every state output stacked back (Unsqueeze + Concat) as `<name>_out`. That computes what the
whole-model trace did, op for op; only each block's own shape computations (a Shape and a Concat
the whole-graph trace shared between blocks) are repeated.

A piece's weight inputs become initializers named after the checkpoint key they come from. Nodes that
read only weights and constants (the transpose of a linear layer's matrix, a cast, a reshape) are
not stamped: they are folded into the initializer while it is written (`WeightEntry.recipe`, run by
onnx's reference evaluator on that one tensor), as the exporter's constant folding did before. The
weights themselves are not here: `WeightEntry` says where each comes from, weights.py writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rwkv_export.export.pieces import STREAM, STREAM_OUT, Piece
from rwkv_export.export.spec import GraphSpec
from rwkv_export.model.state import OUTPUT_SUFFIX


@dataclass(frozen=True)
class Recipe:
    """How a piece's folded value is computed from its weight inputs: a graph over those inputs."""

    piece: str
    value: str  # the piece's value this recipe computes
    inputs: tuple[str, ...]  # the piece's weight inputs it reads (buffer names)
    model: onnx.ModelProto | None  # None: the value *is* inputs[0]
    ops: tuple[str, ...]  # op types of its nodes, in order (for the initializer's name)
    blockwise: bool = False  # only Casts and a 2-D Transpose (perm [1, 0]): weights.py may run it on blocks


@dataclass(frozen=True)
class WeightEntry:
    """One initializer of the graph: `recipe` applied to the layer's prepared buffers."""

    name: str
    layer: int | None  # None: a top-level buffer (embedding, ln0, ln_out, head)
    buffers: tuple[str, ...]  # the model's buffer names the recipe reads (block-local for a layer)
    recipe: Recipe


@dataclass
class _Folded:
    runtime: list[onnx.NodeProto]
    recipes: dict[str, Recipe]  # frontier value -> recipe
    constants: dict[str, onnx.TensorProto] = field(default_factory=dict)  # piece initializers runtime nodes read


def fold_weights(piece: Piece) -> _Folded:
    """Split a piece's nodes into those that read only weights/constants (folded) and the rest."""
    graph = piece.proto.graph
    consts = {t.name: t for t in graph.initializer}
    weights = set(piece.weights)
    known = set(weights) | set(consts)
    folded: dict[str, int] = {}  # value -> index of the (weight-only) node producing it
    depends: dict[str, set[str]] = {w: {w} for w in weights}
    runtime = []
    for j, node in enumerate(graph.node):
        inputs = [i for i in node.input if i]
        from_weights = set().union(*(depends.get(i, set()) for i in inputs)) if inputs else set()
        if inputs and all(i in known or i in folded for i in inputs) and from_weights and not _has_subgraph(node):
            for out in node.output:
                folded[out] = j
                depends[out] = from_weights
        else:
            runtime.append(node)
    used = {i for n in runtime for i in n.input} | {o.name for o in graph.output}
    recipes = {}
    for value in sorted(used & (set(folded) | weights)):
        recipes[value] = _recipe(piece, value, folded, depends[value], consts)
    constants = {n: t for n, t in consts.items() if n in used}
    return _Folded(runtime, recipes, constants)


def _recipe(piece: Piece, value: str, folded: dict[str, int], inputs: set[str], consts: dict[str, onnx.TensorProto]) -> Recipe:
    order = tuple(sorted(inputs, key=piece.weights.index))
    if value in piece.weights:
        return Recipe(piece.name, value, order, None, ())
    ancestors: set[int] = set()
    stack = [value]
    while stack:
        j = folded.get(stack.pop())
        if j is not None and j not in ancestors:
            ancestors.add(j)
            stack.extend(piece.proto.graph.node[j].input)
    nodes = [piece.proto.graph.node[j] for j in sorted(ancestors)]
    needed = {i for n in nodes for i in n.input} & set(consts)
    src = piece.proto
    types = {i.name: i for i in src.graph.input}
    graph = helper.make_graph(
        nodes, f"{piece.name}.{value}", [types[w] for w in order], [helper.make_value_info(value, onnx.TypeProto())],
        initializer=[consts[n] for n in sorted(needed)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=list(src.opset_import), ir_version=src.ir_version)
    perms = [list(a.ints) for n in nodes for a in n.attribute if a.name == "perm"]
    rank = len(types[order[0]].type.tensor_type.shape.dim) if len(order) == 1 else 0
    kinds = [n.op_type for n in nodes]
    blockwise = rank == 2 and set(kinds) <= {"Transpose", "Cast"} and kinds.count("Transpose") <= 1 and perms in ([], [[1, 0]])
    return Recipe(piece.name, value, order, model, tuple(k.lower() for k in kinds), blockwise)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


class _Stamper:
    """Copies pieces into one graph under per-copy prefixes."""

    def __init__(self, pieces: dict[str, Piece]) -> None:
        self.folded = {name: fold_weights(p) for name, p in pieces.items()}
        self.pieces = pieces
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.weights: dict[str, WeightEntry] = {}

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def stamp(
        self, piece: str, prefix: str, bind: dict[str, str], outputs: dict[str, str], keys: dict[str, str], layer: int | None
    ) -> None:
        """Copy `piece`: its activation inputs read `bind`, its outputs are named by `outputs`, its
        weight values become initializers named from the checkpoint keys (`keys`: buffer -> key)."""
        folded = self.folded[piece]
        rename = dict(bind) | dict(outputs)
        for value, recipe in folded.recipes.items():
            name = "+".join(keys[b] for b in recipe.inputs) + "".join("." + op for op in recipe.ops)
            rename[value] = name
            entry = self.weights.setdefault(name, WeightEntry(name, layer, recipe.inputs, recipe))
            if (entry.layer, entry.recipe.inputs, entry.recipe.ops) != (layer, recipe.inputs, recipe.ops):
                raise AssertionError(f"initializer {name} would mean two tensors ({entry.recipe.piece} and {piece})")
        for name, tensor in folded.constants.items():  # the same in every copy of the piece: one each
            rename[name] = f"{piece}/{name}"
            if rename[name] not in self.initializers:
                copy = onnx.TensorProto()
                copy.CopyFrom(tensor)
                copy.name = rename[name]
                self.initializers[copy.name] = copy
        for node in folded.runtime:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.metadata_props[:]
            copy.name = prefix + (node.name or node.output[0])
            copy.input[:] = [rename.get(i, prefix + i) if i else i for i in node.input]
            copy.output[:] = [rename.get(o, prefix + o) if o else o for o in node.output]
            self.nodes.append(copy)


def assemble_prefill(
    pieces: dict[str, Piece], spec: GraphSpec, n_layer: int, halves_after: list[bool], block_keys: list[dict[str, str]],
    top_keys: dict[str, str], stream_dtype: np.dtype,
) -> tuple[onnx.ModelProto, list[WeightEntry]]:  # fmt: skip
    """The prefill graph of an n_layer model from its pieces; block_keys[i]: buffer name -> checkpoint key."""
    s = _Stamper(pieces)
    states = [t.name for t in spec.inputs if t.role == "state"]
    s.stamp("embed", "embed/", {"tokens": "tokens"}, {STREAM: "embed/x"}, top_keys, None)
    stream, ctx = "embed/x", {}
    new: dict[str, list[str]] = {n: [] for n in states}
    half = s.constant("rescale/two", np.array(2, dtype=stream_dtype)) if any(halves_after) else ""
    stack_axis = s.constant("stack/axis", np.array([0], dtype=np.int64))
    for i in range(n_layer):
        piece = pieces["layer0" if i == 0 else "layer1"]
        prefix = f"blocks.{i}/"
        index = s.constant(f"{prefix}index", np.array(i, dtype=np.int64))
        bind = {STREAM: stream} | {n: s.node("Gather", [n, index], f"{prefix}{n}", axis=0) for n in states}
        bind |= {name: ctx[name] for name in piece.activations[1 + len(states) :]}
        outputs = {STREAM_OUT: f"{prefix}x_out"} | {n + OUTPUT_SUFFIX: f"{prefix}{n}{OUTPUT_SUFFIX}" for n in states}
        made = {name: f"{prefix}{name}" for name in piece.outputs[1 + len(states) :]}
        s.stamp(piece.name, prefix, bind, outputs | made, block_keys[i], i)
        ctx |= made
        stream = outputs[STREAM_OUT]
        for n in states:
            new[n].append(s.node("Unsqueeze", [outputs[n + OUTPUT_SUFFIX], stack_axis], f"{prefix}{n}_stacked"))
        if halves_after[i]:
            stream = s.node("Div", [stream, half], f"{prefix}x_halved")
    s.stamp("logits", "head/", {STREAM: stream}, {"logits": "logits"}, top_keys, None)
    for n in states:
        s.node("Concat", new[n], n + OUTPUT_SUFFIX, axis=0)
    template = pieces["layer0"].proto
    weights = [onnx.TensorProto(name=name) for name in s.weights]  # data: weights.py
    graph = helper.make_graph(
        s.nodes, "prefill", [_value_info(t) for t in spec.inputs], [_value_info(t) for t in spec.outputs],
        initializer=[*s.initializers.values(), *weights],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=list(template.opset_import), ir_version=template.ir_version)
    model.producer_name, model.producer_version = template.producer_name, template.producer_version
    return model, list(s.weights.values())


_ONNX_TYPES = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT}


def _value_info(t: object) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(t.name, _ONNX_TYPES[t.dtype], list(t.shape))  # type: ignore[attr-defined]
