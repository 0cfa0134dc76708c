"""Weight-only block quantization of an export's matrices: which weights, in which format.

`plan_quantization(proto, spec, n_embd, shapes)` rewrites every MatMul whose B is a constant `[K, N]`
initializer (and the embedding's Gather) to read quantized tensors, knowing only the weights' shapes;
the tensors themselves are made a slab at a time (qblocks.py), so the streamed export quantizes each
weight as it reads it from the checkpoint and never holds a float model (export/weights.py).
`quantize_graph` does the same to a graph held in memory (requantize.py). Formats:

- `matmulnbits`: ONNX Runtime's `com.microsoft::MatMulNBits` (4 or 8 bits, blocks of `block_size`
  along K), quantized by ONNX Runtime's own kernels (what `onnxruntime.quantization`'s
  MatMulNBitsQuantizer calls), used as a library;
- `qdq`: standard `DequantizeLinear` (blocked along K, opset 21) feeding a plain `MatMul`, which
  TensorRT builds as weight-only quantization. int4 by ONNX Runtime's QDQ kernel; ORT's tool has no
  8-bit QDQ, so int8 blocks are written here with the same rounding rules (numpy).

The embedding Gather becomes `com.microsoft::GatherBlockQuantized` (asymmetric blocks along n_embd;
ORT's quantizer's routine at 4 bits, written here at 8); the qdq format keeps it float.

Each role gets a precision (float, int8, int4) from a policy (`DEFAULT_POLICY`, decided by measurement
with `rwkv-export eval` on the tiny trained models, README; `--policy` overrides it): `head` is the
last matrix before `logits`; `lora` a low-rank matrix (min(K, N) < n_embd: RWKV-6/7 time-mix, decay,
a/v/g LoRA); `matrix` every other block matrix (r, k, v, o, gate, FFN); `embedding` the token table.
Norms, time-mix vectors, decays and every other 1-D tensor stay float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from rwkv_export.errors import RwkvExportError
from rwkv_export.export.qblocks import MS_DOMAIN, QuantizedWeight, describe

QUANT_SCHEMES = {"int8": 8, "int4": 4}
QUANT_FORMATS = ("matmulnbits", "qdq")
ROLES = ("matrix", "lora", "head", "embedding")
PRECISIONS = ("float", "int8", "int4")
DEFAULT_BLOCK_SIZE = 32
# Measured with `rwkv-export eval` on the tiny trained models over held-out Shakespeare (README): every
# role at the export's precision costs < 0.1% perplexity at int8; at int4 the head is the costliest
# single role (tiny RWKV-4: +1.7% perplexity, 88% top-1; an int8 head: +0.9%, 95%, but 0.19x instead of
# 0.16x the float32 bytes at 169M), LoRA matrices in int4 cost nothing measurable (tiny RWKV-7), the
# embedding in int4 ~0.6%. So nothing stays float by default; `--policy head=int8` buys accuracy.
DEFAULT_POLICY: dict[str, tuple[tuple[str, str], ...]] = {"int8": (), "int4": ()}
# MatMulNBits computes in float32 at accuracy level 0 and through int8 activations (per block) at 4. Measured
# on ORT 1.32's CPU kernels (768 x 3072, batch 1, 2 threads): float32 MatMul 1.86 ms; int8 weights 25.5 ms at
# level 0 (dequantizes) vs 0.55 ms at level 4; int4 1.08 vs 0.43 ms. Its accuracy cost: README (eval).
DEFAULT_ACCURACY_LEVEL = 4
QDQ_OPSET = 21  # blocked DequantizeLinear and the INT4/UINT4 types


@dataclass(frozen=True)
class QuantSpec:
    """What `export --quantize` asked for; recorded in the manifest with the policy it resolves to."""

    scheme: str  # int8 | int4: the precision of every role the policy does not name
    block_size: int = DEFAULT_BLOCK_SIZE
    symmetric: bool = False
    format: str = "matmulnbits"
    policy: tuple[tuple[str, str], ...] | None = None  # (role, precision) overrides; None: DEFAULT_POLICY[scheme]
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL  # MatMulNBits' attribute: 4 = int8 activations inside the kernel

    @property
    def bits(self) -> int:
        return QUANT_SCHEMES[self.scheme]

    def precision(self, role: str) -> str:
        """float | int8 | int4 for a role (qdq keeps the embedding float: no standard blocked quantized Gather)."""
        if role == "embedding" and self.format == "qdq":
            return "float"
        overrides = dict(self.policy if self.policy is not None else DEFAULT_POLICY.get(self.scheme, ()))
        return overrides.get(role, self.scheme)

    def check(self, dtype: str) -> None:
        """One-line errors for combinations that cannot be built."""
        if self.scheme not in QUANT_SCHEMES:
            raise RwkvExportError(f"unknown --quantize '{self.scheme}' (expected one of {', '.join(QUANT_SCHEMES)})")
        if self.format not in QUANT_FORMATS:
            raise RwkvExportError(f"unknown --quant-format '{self.format}' (expected one of {', '.join(QUANT_FORMATS)})")
        for role, precision in self.policy or ():
            if role not in ROLES or precision not in PRECISIONS:
                raise RwkvExportError(
                    f"--policy {role}={precision}: expected ROLE=PRECISION with ROLE one of {', '.join(ROLES)} "
                    f"and PRECISION one of {', '.join(PRECISIONS)}"
                )
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise RwkvExportError(
                f"--accuracy-level {self.accuracy_level}: MatMulNBits takes 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)"
            )
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise RwkvExportError(f"--block-size {self.block_size}: MatMulNBits and blocked DequantizeLinear need a power of two >= 16")
        if dtype != "float32" and self.format == "matmulnbits":
            raise RwkvExportError(
                f"--quantize {self.scheme} cannot combine with --dtype {dtype} in the matmulnbits format "
                "(ONNX Runtime's CPU MatMulNBits takes float32 activations); use --quant-format qdq or --dtype float32"
            )

    def to_dict(self) -> dict[str, object]:
        return {
            "scheme": self.scheme,
            "bits": self.bits,
            "block_size": self.block_size,
            "symmetric": self.symmetric,
            "format": self.format,
            "accuracy_level": self.accuracy_level if self.format == "matmulnbits" else None,
            "policy": {role: self.precision(role) for role in ROLES},
        }


Shapes = Mapping[str, tuple[tuple[int, ...], int]]  # initializer name -> (dims, onnx data type)


def plan_quantization(
    model: onnx.ModelProto, spec: QuantSpec, n_embd: int, shapes: Shapes
) -> tuple[dict[str, QuantizedWeight], dict[str, dict[str, int]]]:
    """Rewrite `model`'s nodes that read a constant matrix the policy quantizes (MatMul B, the
    embedding's Gather) to read its quantized tensors, which are added as empty initializers (data:
    `QuantizedWeight.quantize`, slab by slab). Needs only the weights' shapes, not their data; the float
    initializers stay until `drop_unused_initializers`. Returns (float name -> how it is stored, the
    count of nodes per role and precision)."""
    graph = model.graph
    roles = {**classify_matmuls(graph, shapes, n_embd), **_embedding_nodes(graph, shapes)}
    chosen = {name: spec.precision(role) for name, role in roles.items() if spec.precision(role) != "float"}
    plans: dict[str, QuantizedWeight] = {}
    for node in graph.node:
        if node.name in chosen:
            gather = node.op_type == "Gather"
            weight = node.input[0] if gather else node.input[1]
            dims, data_type = shapes[weight]
            k = dims[1] if gather else dims[0]
            if k % spec.block_size:
                raise RwkvExportError(
                    f"--block-size {spec.block_size} does not divide the dimension {k} of {weight} "
                    f"(shape {list(dims)}) that its blocks run along; pick a divisor of every such size"
                )
            op = "gather" if gather else "dq" if spec.format == "qdq" else "matmulnbits"
            symmetric = spec.symmetric and not gather
            plan = QuantizedWeight(weight, op, QUANT_SCHEMES[chosen[node.name]], spec.block_size, symmetric, (dims[0], dims[1]), data_type)
            if plans.setdefault(weight, plan) != plan:
                raise RwkvExportError(f"{weight} is read by two nodes the policy quantizes differently")
    if spec.format == "qdq":
        _raise_opset(model, QDQ_OPSET)
    elif chosen and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    summary: dict[str, dict[str, int]] = {r: {"float": 0, "int8": 0, "int4": 0} for r in ROLES}
    new_nodes: list[onnx.NodeProto] = []
    for node in list(graph.node):
        role, precision = roles.get(node.name), chosen.get(node.name, "float")
        if role is not None:
            summary[role][precision] += 1
        weight = node.input[0] if node.op_type == "Gather" else node.input[1] if len(node.input) > 1 else ""
        new_nodes += [node] if precision == "float" else plans[weight].node(node, spec.accuracy_level)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(onnx.TensorProto(name=o.name) for plan in plans.values() for o in plan.outputs)
    return plans, summary


def quantize_graph(model: onnx.ModelProto, spec: QuantSpec, n_embd: int) -> dict[str, object]:
    """Quantize `model`'s constant-weight matrices (and embedding), held in memory, in place by the
    spec's policy (RWKV-4's Gemm turned into a MatMul first); return `quantization_summary`."""
    graph = model.graph
    _gemms_to_matmuls(graph)
    inits = {t.name: t for t in graph.initializer}
    plans, counts = plan_quantization(model, spec, n_embd, {n: (tuple(t.dims), t.data_type) for n, t in inits.items()})
    placeholders = {t.name: t for t in graph.initializer}
    for plan in plans.values():
        for output, part in zip(plan.outputs, plan.quantize(numpy_helper.to_array(inits[plan.source])), strict=True):
            describe(placeholders[output.name], output, np.ascontiguousarray(part).tobytes())
    drop_unused_initializers(graph)
    return quantization_summary(model, plans, counts)


def quantization_summary(model: onnx.ModelProto, plans: dict[str, QuantizedWeight], counts: dict[str, dict[str, int]]) -> dict[str, object]:
    """What a quantized graph holds: nodes per role and precision, stored weight bytes, and the
    embedding table's bytes (quantized or not; the bandwidth floor reads one row of it per token)."""
    sizes = {t.name: stored_bytes(t) for t in model.graph.initializer}
    tables = {o.name for p in plans.values() if p.op == "gather" for o in p.outputs}
    if not tables:  # the table stayed float
        shapes = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
        embedding = _embedding_nodes(model.graph, shapes)
        tables = {n.input[0] for n in model.graph.node if n.name in embedding}
    return {
        "roles": {r: {p: n for p, n in c.items() if n} for r, c in counts.items()},
        "weight_bytes": sum(sizes.values()),
        "embedding_bytes": sum(sizes.get(name, 0) for name in tables),
    }


def stored_bytes(tensor: onnx.TensorProto) -> int:
    """A tensor's stored bytes: inline, or its external data's length."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return int({e.key: e.value for e in tensor.external_data}["length"])
    return len(tensor.raw_data) if tensor.raw_data else numpy_helper.to_array(tensor).nbytes


def _embedding_nodes(graph: onnx.GraphProto, shapes: Shapes) -> dict[str, str]:
    """node name -> "embedding" for each Gather of rows (axis 0) from a 2-D float32 initializer."""
    out = {}
    for node in graph.node:
        table = shapes.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if table is not None and len(table[0]) == 2 and axis == 0 and table[1] == onnx.TensorProto.FLOAT and node.name:
            out[node.name] = "embedding"
    return out


def classify_matmuls(graph: onnx.GraphProto, shapes: Shapes, n_embd: int) -> dict[str, str]:
    """node name -> role for every MatMul whose weight is a 2-D constant initializer."""
    out = {}
    for node in graph.node:
        weight = shapes.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is None or len(weight[0]) != 2 or weight[1] not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        if not node.name:
            raise RwkvExportError("a MatMul node without a name cannot be quantized (the exporter names every node)")
        out[node.name] = "lora" if min(weight[0]) < n_embd else "matrix"
    head = _head_node(graph)
    if head in out:
        out[head] = "head"
    return out


def _head_node(graph: onnx.GraphProto) -> str | None:
    """The first MatMul met walking back from the `logits` output (through reshapes, squeezes, casts)."""
    producers = {o: n for n in graph.node for o in n.output}
    frontier = ["logits"]
    seen: set[str] = set()
    while frontier:
        node = producers.get(frontier.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "MatMul":
            return node.name
        frontier += list(node.input[:1])
    return None


def _gemms_to_matmuls(graph: onnx.GraphProto) -> None:
    """Gemm(A, W, transB=1) with a constant W and no C (RWKV-4's linears in older exports) -> MatMul(A, W^T)."""
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and not attrs.get("transA", 0) and len(node.input) == 2
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        name = node.input[1] + "_kn"
        graph.initializer.append(numpy_helper.from_array(weight, name))
        node.op_type, node.input[1] = "MatMul", name
        del node.attribute[:]
    drop_unused_initializers(graph)


def _raise_opset(model: onnx.ModelProto, version: int) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = _used_names(graph)
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node of `graph` or of its subgraphs (Scan, Loop, If bodies) reads."""
    used = set()
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                used |= _used_names(sub)
    return used


def quantization_manifest(spec: QuantSpec, per_graph: dict[str, dict[str, object]]) -> dict[str, object]:
    """The manifest's `export.quantization`: the spec, its policy per role, and what each graph got (norms,
    time-mix vectors and other 1-D tensors always stay float)."""
    return {**spec.to_dict(), "graphs": per_graph}
