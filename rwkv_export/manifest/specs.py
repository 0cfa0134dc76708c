"""The sections of manifest.json as dataclasses: parse(value, where) -> instance, to_dict() -> JSON.

to_dict() writes the keys in the order the exporter always wrote them and leaves out optional keys
that are absent, so a manifest round-trips byte for byte. `check_whole` checks what no single
section can: the state against every graph's inputs and outputs, logits against the vocabulary,
the sha256 table against the files, and the state's size before anything allocates it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rwkv_export.manifest import fields as F

if TYPE_CHECKING:
    from rwkv_export.manifest import Manifest

DTYPES = ("float32", "float16", "int64", "int32", "bool")
ROLES = ("tokens", "logits", "state", "data")  # data: any other tensor (a one-op graph's)
TOKENIZER_KINDS = ("bytes", "huggingface", "gpt-neox-20b", "world", "none")
MAX_STATE_ELEMENTS = 1 << 30  # per batch row (4 GiB of float32): 100x the largest RWKV's state


def _drop_none(items: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in items.items() if v is not None}


class NamedIO:
    """The names of a graph's inputs and outputs, for a dataclass with `inputs` and `outputs` of TensorSpec."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a graph. Dims are ints or names ("batch", "seq")."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    role: str  # "tokens" | "logits" | "state" | "data"
    feeds: str | None = None  # an output state -> the input it feeds on the next call
    initial: float | None = None  # an input state's initial value
    initial_file: str | None = None  # ... or a .npy in the export directory holding it

    @classmethod
    def parse(cls, value: Any, where: str) -> TensorSpec:
        o = F.Obj(value, where)
        spec = cls(
            o.get("name", F.string),
            o.get("dtype", F.one_of(*DTYPES)),
            o.get("shape", F.shape),
            o.get("role", F.one_of(*ROLES)),
            o.get("feeds", F.string, None),
            o.get("initial", F.number, None),
            o.get("initial_file", F.file_name, None),
        )
        o.done()
        return spec

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor: the input `name`, fed by the output `output` of the previous call."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    initial: float
    output: str
    initial_file: str | None = None
    initial_sha256: str | None = None
    role: str = "state"

    @classmethod
    def parse(cls, value: Any, where: str) -> StateSpec:
        o = F.Obj(value, where)
        spec = cls(
            name=o.get("name", F.string),
            dtype=o.get("dtype", F.one_of("float32", "float16")),
            shape=o.get("shape", F.shape),
            role=o.get("role", F.one_of("state")),
            initial=o.get("initial", F.number),
            initial_file=o.get("initial_file", F.file_name, None),
            output=o.get("output", F.string),
            initial_sha256=o.get("initial_sha256", F.sha256, None),
        )
        o.done()
        if (spec.initial_file is None) != (spec.initial_sha256 is None):
            raise F.FieldError(f"{where}.initial_sha256", "initial_file and initial_sha256 go together")
        batch = [d for d in spec.shape if isinstance(d, str)]
        if batch != ["batch"]:
            raise F.FieldError(f"{where}.shape", f"expected ints and one 'batch' dim, got {list(spec.shape)}")
        elements = math.prod(d for d in spec.shape if isinstance(d, int))
        if elements > MAX_STATE_ELEMENTS:
            raise F.FieldError(f"{where}.shape", f"{elements} elements per batch row is more than {MAX_STATE_ELEMENTS}")
        return spec

    @property
    def batch_axis(self) -> int:
        """The axis of the one "batch" dim (parse checked there is exactly one)."""
        return self.shape.index("batch")

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "batch" else int(d) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "name": self.name,
                "dtype": self.dtype,
                "shape": self.shape,
                "role": self.role,
                "initial": self.initial,
                "initial_file": self.initial_file,
                "output": self.output,
                "initial_sha256": self.initial_sha256,
            }
        )


def parse_state(value: Any, where: str) -> tuple[StateSpec, ...]:
    return F.list_of(StateSpec.parse, max_len=64)(value, where)


@dataclass(frozen=True)
class Graph(NamedIO):
    file: str
    opset: int
    wkv_nodes: int
    external_data: tuple[str, ...]
    sha256: dict[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def parse(cls, value: Any, where: str) -> Graph:
        o = F.Obj(value, where)
        graph = cls(
            o.get("file", F.file_name),
            o.get("opset", F.integer(1, 1000)),
            o.get("wkv_nodes", F.integer(0, 1 << 20)),
            o.get("external_data", F.list_of(F.file_name, max_len=64)),
            o.get("sha256", F.dict_of(F.sha256, F.file_name)),
            o.get("inputs", F.list_of(TensorSpec.parse, 1, 256)),
            o.get("outputs", F.list_of(TensorSpec.parse, 1, 256)),
        )
        o.done()
        if set(graph.sha256) != {graph.file, *graph.external_data}:
            raise F.FieldError(f"{where}.sha256", f"expected a sha256 for each of {', '.join([graph.file, *graph.external_data])}")
        for kind, specs in (("inputs", graph.inputs), ("outputs", graph.outputs)):
            names = [t.name for t in specs]
            if len(set(names)) != len(names):
                raise F.FieldError(f"{where}.{kind}", "tensor names repeat")
        return graph

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "opset": self.opset,
            "wkv_nodes": self.wkv_nodes,
            "external_data": list(self.external_data),
            "sha256": dict(self.sha256),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


@dataclass(frozen=True)
class ModelInfo:
    version: str
    n_layer: int
    n_embd: int
    vocab_size: int
    ffn_size: int
    parameters: int
    n_head: int | None = None  # RWKV-5 and later
    head_size: int | None = None
    group_norm_eps: float | None = None
    wkv_state_layout: str | None = None

    @classmethod
    def parse(cls, value: Any, where: str) -> ModelInfo:
        o = F.Obj(value, where)
        dim = F.integer(1, F.MAX_DIM)
        info = cls(
            o.get("version", F.string),
            o.get("n_layer", F.integer(1, 4096)),
            o.get("n_embd", dim),
            o.get("vocab_size", dim),
            o.get("ffn_size", dim),
            o.get("parameters", F.integer(0)),
            o.get("n_head", dim, None),
            o.get("head_size", dim, None),
            o.get("group_norm_eps", F.number, None),
            o.get("wkv_state_layout", F.string, None),
        )
        o.done()
        return info

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))


@dataclass(frozen=True)
class Source:
    path: str
    format: str
    dtype: str

    @classmethod
    def parse(cls, value: Any, where: str) -> Source:
        o = F.Obj(value, where)
        source = cls(o.get("path", F.string), o.get("format", F.string), o.get("dtype", F.string))
        o.done()
        return source


@dataclass(frozen=True)
class TokenizerInfo:
    kind: str
    file: str | None
    hint: str | None = None
    sha256: str | None = None

    @classmethod
    def parse(cls, value: Any, where: str) -> TokenizerInfo:
        o = F.Obj(value, where)
        info = cls(
            o.get("kind", F.one_of(*TOKENIZER_KINDS)),
            o.get("file", F.nullable(F.file_name)),
            o.get("hint", F.string, None),
            o.get("sha256", F.sha256, None),
        )
        o.done()
        if (info.file is None) != (info.sha256 is None):
            raise F.FieldError(f"{where}.sha256", "a tokenizer file and its sha256 go together")
        if info.kind == "huggingface" and info.file is None:
            raise F.FieldError(f"{where}.file", "a huggingface tokenizer needs its file")
        return info

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind, "file": self.file}
        return out | _drop_none({"hint": self.hint, "sha256": self.sha256})


@dataclass(frozen=True)
class ExportOptions:
    dtype: str
    opset: int
    all_logits: bool
    wkv_form: str
    rescale_every: int
    wkv_domain: str
    plugin_namespace: str
    plugin_version: str
    wkv_function_sha256: str | None = None  # exports before the body fingerprint lack it
    wkv_op: str | None = None  # exports before RWKV-5 lack it: WKV4
    quantization: dict[str, Any] | None = None  # `export --quantize`: what was quantized and how (export/quantize.py)

    @property
    def op(self) -> str:
        return self.wkv_op or "WKV4"

    @classmethod
    def parse(cls, value: Any, where: str) -> ExportOptions:
        o = F.Obj(value, where)
        options = cls(
            dtype=o.get("dtype", F.one_of("float32", "float16")),
            opset=o.get("opset", F.integer(1, 1000)),
            all_logits=o.get("all_logits", F.boolean),
            wkv_form=o.get("wkv_form", F.string),
            wkv_function_sha256=o.get("wkv_function_sha256", F.sha256, None),
            rescale_every=o.get("rescale_every", F.integer(0, 1 << 20)),
            wkv_domain=o.get("wkv_domain", F.string),
            wkv_op=o.get("wkv_op", F.string, None),
            plugin_namespace=o.get("plugin_namespace", F.string),
            plugin_version=o.get("plugin_version", F.string),
            quantization=o.get("quantization", quantization, None),
        )
        o.done()
        return options

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(
            {
                "dtype": self.dtype,
                "opset": self.opset,
                "all_logits": self.all_logits,
                "wkv_form": self.wkv_form,
                "wkv_function_sha256": self.wkv_function_sha256,
                "rescale_every": self.rescale_every,
                "wkv_domain": self.wkv_domain,
                "wkv_op": self.wkv_op,
                "plugin_namespace": self.plugin_namespace,
                "plugin_version": self.plugin_version,
                "quantization": self.quantization,
            }
        )


def quantization(value: Any, where: str) -> dict[str, Any]:
    """export.quantization: an object naming its scheme, bits, block size and format; the per-role policy
    and per-graph counts ride along as the exporter wrote them (the runtime needs none of it: the graphs'
    own nodes carry their quantization)."""
    o = F.Obj(value, where)
    o.get("scheme", F.one_of("int8", "int4"))
    o.get("bits", F.integer(2, 8))
    o.get("block_size", F.integer(16, 1 << 20))
    o.get("format", F.one_of("matmulnbits", "qdq"))
    return dict(value)


@dataclass(frozen=True)
class Engine:
    """A TensorRT plan `rwkv-export build` recorded for one graph."""

    file: str
    sha256: str
    target: str
    tensorrt_version: str
    plugin: str
    ptx_arch: str | None
    compute_capabilities: tuple[str, ...]
    profile: dict[str, tuple[tuple[int, ...], ...]]
    plugin_layers: int

    @classmethod
    def parse(cls, value: Any, where: str) -> Engine:
        o = F.Obj(value, where)
        triple = F.list_of(F.list_of(F.integer(0, 1 << 31), max_len=8), 3, 3)
        engine = cls(
            o.get("file", F.file_name),
            o.get("sha256", F.sha256),
            o.get("target", F.one_of("tensorrt", "tensorrt-rtx")),
            o.get("tensorrt_version", F.string),
            o.get("plugin", F.one_of("python", "aot", "none")),
            o.get("ptx_arch", F.nullable(F.string)),
            o.get("compute_capabilities", F.list_of(F.string)),
            o.get("profile", F.dict_of(triple)),
            o.get("plugin_layers", F.integer(0, 1 << 20)),
        )
        o.done()
        return engine

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["compute_capabilities"] = list(self.compute_capabilities)
        out["profile"] = {k: [list(b) for b in v] for k, v in self.profile.items()}
        return out


def check_whole(m: Manifest) -> None:
    """What no section checks alone; raises FieldError naming the field."""
    if m.dtype != m.export.dtype:
        raise F.FieldError("export.dtype", f"'{m.export.dtype}' differs from dtype '{m.dtype}'")
    names = {s.name: (i, s) for i, s in enumerate(m.state)}
    if len(names) != len(m.state):
        raise F.FieldError("state", "state names repeat")
    for gname, graph in m.graphs.items():
        _check_graph(m, gname, graph, names)


def _check_graph(m: Manifest, gname: str, graph: Graph, states: dict[str, tuple[int, StateSpec]]) -> None:
    where = f"graphs.{gname}"
    known = set(m.dynamic_dims) if m.dynamic_dims is not None else None
    for kind, specs in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        for j, t in enumerate(specs):
            at = f"{where}.{kind}[{j}]"
            unknown = [d for d in t.shape if isinstance(d, str) and known is not None and d not in known]
            if unknown:
                raise F.FieldError(f"{at}.shape", f"dim '{unknown[0]}' is not one of dynamic_dims ({', '.join(known or ())})")
            if t.role == "logits" and t.shape[-1:] != (m.model.vocab_size,):
                raise F.FieldError(f"{at}.shape", f"logits end in the vocab size {m.model.vocab_size}, got {list(t.shape)}")
    inputs = {t.name: t for t in graph.inputs if t.role == "state"}
    if set(inputs) != set(states):
        raise F.FieldError(f"{where}.inputs", f"state inputs {sorted(inputs)} differ from the manifest's state {sorted(states)}")
    outputs = {t.name: t for t in graph.outputs}
    for name, (i, spec) in states.items():
        got = inputs[name]
        if (got.shape, got.dtype) != (spec.shape, spec.dtype):
            raise F.FieldError(f"{where}.inputs", f"'{name}' is {got.dtype} {list(got.shape)}, state[{i}] {spec.dtype} {list(spec.shape)}")
        if (got.initial, got.initial_file) != (spec.initial, spec.initial_file):
            raise F.FieldError(
                f"{where}.inputs",
                f"'{name}' starts from {got.initial_file or got.initial}, state[{i}] from {spec.initial_file or spec.initial}",
            )
        out = outputs.get(spec.output)
        if out is None or out.feeds != name or out.shape != spec.shape:
            raise F.FieldError(f"{where}.outputs", f"no state output '{spec.output}' of shape {list(spec.shape)} feeding '{name}'")
