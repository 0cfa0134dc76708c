"""Weight-only block quantization of an exported graph's matrices (an export-stage post-pass).

`quantize_graph(proto, spec, n_embd)` rewrites every MatMul (and RWKV-4's Gemm, turned into a MatMul
first) whose weight is a constant `[K, N]` initializer, one node and one tensor at a time, so the pass
works the same on a streamed export. Formats:

- `matmulnbits`: ONNX Runtime's `com.microsoft::MatMulNBits` (4 or 8 bits, blocks of `block_size`
  along K), made by ONNX Runtime's own quantizer (`onnxruntime.quantization.matmul_nbits_quantizer`),
  used as a library;
- `qdq`: standard `DequantizeLinear` (blocked along K, opset 21) feeding a plain `MatMul`, which
  TensorRT builds as weight-only quantization. int4 comes from the same ORT quantizer; ORT's tool has
  no 8-bit QDQ, so int8 blocks are written here with the same rounding rules (numpy).

The embedding Gather becomes `com.microsoft::GatherBlockQuantized` (blocks along n_embd; ORT's tool
at 4 bits, written here at 8); the qdq format keeps it float.

Each role gets a precision (float, int8, int4) from a policy (`DEFAULT_POLICY`, decided by measurement
with `rwkv-export eval` on the tiny trained models, README; `--policy` overrides it): `head` is the
last matrix before `logits`; `lora` a low-rank matrix (min(K, N) < n_embd: RWKV-6/7 time-mix, decay,
a/v/g LoRA); `matrix` every other block matrix (r, k, v, o, gate, FFN); `embedding` the token table.
Norms, time-mix vectors, decays and every other 1-D tensor stay float.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from rwkv_export.errors import RwkvExportError

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
MS_DOMAIN = "com.microsoft"  # MatMulNBits' and GatherBlockQuantized's domain
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


def quantize_graph(model: onnx.ModelProto, spec: QuantSpec, n_embd: int) -> dict[str, object]:
    """Quantize `model`'s constant-weight matrices (and embedding) in place, one tensor at a time, by the
    spec's policy; return counts per role and the stored weight bytes."""
    graph = model.graph
    _gemms_to_matmuls(graph)
    inits = {t.name: t for t in graph.initializer}
    roles = {**classify_matmuls(graph, inits, n_embd), **_embedding_nodes(graph, inits)}
    chosen = {name: spec.precision(role) for name, role in roles.items() if spec.precision(role) != "float"}
    for node in graph.node:
        if node.name in chosen:
            weight = inits[node.input[0] if node.op_type == "Gather" else node.input[1]]
            k = weight.dims[1] if node.op_type == "Gather" else weight.dims[0]
            if k % spec.block_size:
                raise RwkvExportError(
                    f"--block-size {spec.block_size} does not divide the dimension {k} of {weight.name} "
                    f"(shape {list(weight.dims)}) that its blocks run along; pick a divisor of every such size"
                )
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
        new_nodes += [node] if precision == "float" else _quantize_node(node, graph, inits, spec, precision)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    sizes = {t.name: _tensor_bytes(t) for t in graph.initializer}
    table_outputs = {n.output[0] for n in graph.node if roles.get(n.name) == "embedding"} | {
        n.output[0] for n in new_nodes if n.op_type == "GatherBlockQuantized"
    }
    table_bytes = sum(sizes.get(i, 0) for n in graph.node if n.output and n.output[0] in table_outputs for i in n.input)
    return {
        "roles": {r: {p: n for p, n in c.items() if n} for r, c in summary.items()},
        "weight_bytes": sum(sizes.values()),
        "embedding_bytes": table_bytes,
    }


def _quantize_node(
    node: onnx.NodeProto, graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], spec: QuantSpec, precision: str
) -> list[onnx.NodeProto]:
    bits = QUANT_SCHEMES[precision]
    if node.op_type == "Gather":
        return _int8_gather(node, graph, inits, spec) if bits == 8 else _ort_quantizer(spec, 4).quantize_gather(node, [graph])
    if spec.format == "qdq" and bits == 8:
        return _int8_qdq(node, graph, inits, spec)
    return _ort_quantizer(spec, bits).quantize_matmul(node, [graph])


def _embedding_nodes(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto]) -> dict[str, str]:
    """node name -> "embedding" for each Gather of rows (axis 0) from a 2-D float initializer."""
    out = {}
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        if table is not None and len(table.dims) == 2 and axis == 0 and table.data_type == onnx.TensorProto.FLOAT and node.name:
            out[node.name] = "embedding"
    return out


def classify_matmuls(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], n_embd: int) -> dict[str, str]:
    """node name -> role for every MatMul whose weight is a 2-D constant initializer."""
    out = {}
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 2 or weight.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        if not node.name:
            raise RwkvExportError("a MatMul node without a name cannot be quantized (the exporter names every node)")
        out[node.name] = "lora" if min(weight.dims) < n_embd else "matrix"
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
    """Gemm(A, W, transB=1) with a constant W and no C (RWKV-4's linears) -> MatMul(A, W^T)."""
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
    _drop_unused_initializers(graph)


@functools.lru_cache(maxsize=8)
def _ort_quantizer(spec: QuantSpec, bits: int):  # type: ignore[no-untyped-def]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import (  # type: ignore[import-untyped]
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )
    from onnxruntime.quantization.quant_utils import QuantFormat  # type: ignore[import-untyped]

    root.handlers[:], root.level = handlers, level  # the module calls logging.basicConfig(level=INFO) on import
    fmt = QuantFormat.QDQ if spec.format == "qdq" else QuantFormat.QOperator
    config = DefaultWeightOnlyQuantConfig(
        block_size=spec.block_size, is_symmetric=spec.symmetric, quant_format=fmt, bits=bits, accuracy_level=spec.accuracy_level or None
    )
    return DefaultWeightOnlyQuantizer(config)


def _int8_gather(node: onnx.NodeProto, graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], spec: QuantSpec) -> list[onnx.NodeProto]:
    """Gather(table [V, C]) -> com.microsoft::GatherBlockQuantized with 8-bit blocks along C (ORT's tool
    quantizes a Gather at 4 bits only); always with zero points (the op's uint8 data needs them)."""
    table = numpy_helper.to_array(inits[node.input[0]])
    q, scale, zero = block_quantize_int8(table.T, spec.block_size, symmetric=False)
    assert zero is not None  # asymmetric blocks always have zero points
    base = node.input[0] + "_Q8"
    tensors = [
        numpy_helper.from_array(np.ascontiguousarray(q.T), base),
        numpy_helper.from_array(np.ascontiguousarray(scale.T), base + "_scales"),
        numpy_helper.from_array(np.ascontiguousarray(zero.T), base + "_zero_points"),
    ]
    graph.initializer.extend(tensors)
    return [
        onnx.helper.make_node(
            "GatherBlockQuantized",
            [base, node.input[1], base + "_scales", base + "_zero_points"],
            list(node.output),
            name=node.name + "_Q8",
            domain=MS_DOMAIN,
            bits=8,
            block_size=spec.block_size,
            gather_axis=0,
            quantize_axis=1,
        )
    ]


def block_quantize_int8(weight: np.ndarray, block_size: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """[K, N] float -> (q [K, N] int8|uint8, scales [K/bs, N], zero points [K/bs, N] uint8 or None),
    blocks along K; ORT's rounding rules (symmetric: scale = absmax/127; asymmetric: range incl. 0 / 255)."""
    k, n = weight.shape
    blocks = weight.astype(np.float32).reshape(k // block_size, block_size, n)
    if symmetric:
        scale = np.abs(blocks).max(axis=1) / 127.0
        q = np.clip(np.rint(blocks / np.where(scale == 0, 1, scale)[:, None, :]), -127, 127).astype(np.int8)
        return q.reshape(k, n), scale.astype(weight.dtype), None
    lo, hi = np.minimum(blocks.min(axis=1), 0), np.maximum(blocks.max(axis=1), 0)
    scale = (hi - lo) / 255.0
    safe = np.where(scale == 0, 1, scale)
    zero = np.clip(np.rint(-lo / safe), 0, 255)
    q = np.clip(np.rint(blocks / safe[:, None, :] + zero[:, None, :]), 0, 255).astype(np.uint8)
    return q.reshape(k, n), scale.astype(weight.dtype), zero.astype(np.uint8)


def _int8_qdq(node: onnx.NodeProto, graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], spec: QuantSpec) -> list[onnx.NodeProto]:
    weight = numpy_helper.to_array(inits[node.input[1]])
    q, scale, zero = block_quantize_int8(weight, spec.block_size, spec.symmetric)
    base = node.input[1] + "_DQ_Q8"
    tensors = [numpy_helper.from_array(q, base), numpy_helper.from_array(scale, base + "_scales")]
    if zero is not None:
        tensors.append(numpy_helper.from_array(zero, base + "_zero_points"))
    graph.initializer.extend(tensors)
    dq = onnx.helper.make_node(
        "DequantizeLinear", [t.name for t in tensors], [base + "_output"], name=node.name + "_DQ_Q8", axis=0, block_size=spec.block_size
    )
    matmul = onnx.helper.make_node("MatMul", [node.input[0], base + "_output"], list(node.output), name=node.name + "_matmul_Q8")
    return [dq, matmul]


def _raise_opset(model: onnx.ModelProto, version: int) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
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


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    return len(tensor.raw_data) if tensor.raw_data else numpy_helper.to_array(tensor).nbytes


def quantization_manifest(spec: QuantSpec, per_graph: dict[str, dict[str, object]]) -> dict[str, object]:
    """The manifest's `export.quantization`: the spec, its policy per role, and what each graph got (norms,
    time-mix vectors and other 1-D tensors always stay float)."""
    return {**spec.to_dict(), "graphs": per_graph}
