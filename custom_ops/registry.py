"""The WKV ops, one entry each: everything a stage needs to know about rwkv::WKV4 .. rwkv::WKV7.

    spec = op_spec("WKV6")
    spec.inputs, spec.outputs, spec.dims[name]   # schema: names in node order, symbolic shapes
    spec.state, spec.state_initial               # state input -> output pairs, initial values
    spec.state_layout                            # the per-head state's layout (None: per channel)
    spec.reference(*tensors) / spec.oracle(*arrays)   # torch definition / float64 numpy oracle
    spec.bodies, spec.default_body, spec.chunks  # ONNX function bodies (ops.onnx_function builds them)
    spec.kernel                                  # CUDA: .cu unit, launch forms, entries, sizes
    spec.shape_like, spec.dtype_like             # TensorRT output rules: the input an output copies
    spec.check_shapes(shapes)                    # the op's sizes from its input shapes

Words: a *body* is one way of writing the op's ONNX function (scan, chunked, gemm); a *launch
form* is one CUDA kernel of the op (seq, seq4, chunked, step, head); a *front* is how TensorRT
reaches the kernels (python: class-based IPluginV3, aot: decorator plugin with the PTX in the plan).
Adding an op: its module (schema, torch, numpy), its ONNX body module, its kernels, and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from rwkv_export.errors import RwkvExportError
from rwkv_export.ops import wkv4, wkv4_onnx, wkv5, wkv6, wkv6_onnx, wkv7, wkv7_onnx

DOMAIN = "rwkv"
DOMAIN_VERSION = 1
PLUGIN_NAMESPACE = "rwkv"
PLUGIN_VERSION = "1"
IO_DTYPES = ("f32", "f16")  # what the kernels read their IO inputs as
HEAD_SIZES = (8, 16, 32, 64, 128)  # N of the per-head kernels: one template instance each

Dims = tuple[str, ...]


@dataclass(frozen=True)
class KernelSpec:
    """The op's CUDA kernels (plugins/<unit>.cu), entries `entry.format(launch=, n=, io=)`."""

    unit: str
    launches: tuple[str, ...]  # launch forms; the first is the default of an explicit request
    entry: str  # e.g. "wkv4_{launch}_{io}", "wkv6_n{n}_{io}"
    scalars: Dims  # int32 size arguments, in order (a "step" launch drops T)
    io_inputs: tuple[str, ...]  # inputs read in the IO dtype (f32 | f16, one for all); the rest float32
    head_sizes: tuple[int, ...] = ()  # compiled N values (per-head kernels); () = any size

    def entries(self) -> list[str]:
        """Every extern "C" kernel of this op."""
        sizes = self.head_sizes or (0,)
        return [self.entry.format(launch=f, n=n, io=io) for f in self.launches for n in sizes for io in IO_DTYPES]

    def launch_scalars(self, launch: str) -> Dims:
        return tuple(s for s in self.scalars if not (launch == "step" and s == "T"))


@dataclass(frozen=True)
class OpSpec:
    name: str
    module: ModuleType  # custom_ops/wkvN.py: the op's docstring is its full contract
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dims: dict[str, Dims]  # symbolic shape of every input and output
    sizes: Dims  # the op's sizes, read from the shape of input `k`
    state: tuple[tuple[str, str], ...]  # (state input, state output)
    state_initial: dict[str, float]
    state_layout: str | None
    reference: Callable[..., tuple]  # torch, in the dtype of the state
    oracle: Callable[..., tuple]  # numpy, float64 by default (dtype=)
    body_module: ModuleType  # custom_ops/wkvN_onnx.py: nodes(op, body, chunk, single_step)
    bodies: tuple[str, ...]
    default_body: str
    chunks: dict[str, int]  # bodies that take a chunk length L -> their default L
    kernel: KernelSpec
    shape_like: tuple[str, ...]  # output i has the shape of this input
    dtype_like: tuple[str | None, ...]  # ... and its dtype, or None: float32
    aot_by_default: bool  # `build --plugin auto` takes the AOT front on standard TensorRT (else: python)

    @property
    def io_positions(self) -> tuple[int, ...]:
        return tuple(self.inputs.index(n) for n in self.kernel.io_inputs)

    def function_doc(self, body: str) -> str:
        """The doc_string of the op's FunctionProto (part of its fingerprint)."""
        return f"{self.name}, form {body!r}" + (f", state {self.state_layout}" if self.state_layout else "")

    def check_shapes(self, shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
        """The op's sizes (e.g. (B, T, C) or (B, T, H, N)) from its input shapes; -1 (dynamic)
        matches anything. ValueError naming the op and the input on a mismatch."""
        if len(shapes) != len(self.inputs):
            raise ValueError(f"{self.name} takes {len(self.inputs)} inputs {self.inputs}, got {len(shapes)}")
        k = [int(d) for d in shapes[self.inputs.index("k")]]
        if len(k) != len(self.sizes):
            raise ValueError(f"{self.name} input k must be [{', '.join(self.sizes)}], got shape {k}")
        size = dict(zip(self.sizes, k))
        n = size.get("N", -1)
        if self.kernel.head_sizes and n != -1 and n not in self.kernel.head_sizes:
            sizes = ", ".join(map(str, self.kernel.head_sizes))
            raise ValueError(f"{self.name} has no kernel for head size {n} (compiled: {sizes}); build with --plugin none")
        for name, got in zip(self.inputs, shapes):
            want = [size[d] for d in self.dims[name]]
            got = [int(g) for g in got]
            if len(got) != len(want) or any(g != w and -1 not in (g, w) for g, w in zip(got, want)):
                raise ValueError(f"{self.name} input {name} must have shape {want} (from k {k}), got {got}")
        return tuple(k)


_SEQ4 = ("B", "T", "H", "N")
_HEAD_STATE = ("B", "H", "N", "N")
_HEAD_IO = ("r", "k", "v", "a", "b")


def _wkv4() -> OpSpec:
    state = ("B", "C")
    seq = ("B", "T", "C")
    return OpSpec(
        name="WKV4", module=wkv4, inputs=wkv4.INPUTS, outputs=wkv4.OUTPUTS,
        dims={"time_decay": ("C",), "time_first": ("C",), "k": seq, "v": seq, "y": seq,
              **dict.fromkeys(("aa", "bb", "pp", "aa_out", "bb_out", "pp_out"), state)},
        sizes=seq, state=(("aa", "aa_out"), ("bb", "bb_out"), ("pp", "pp_out")),
        state_initial={"aa": 0.0, "bb": 0.0, "pp": wkv4.PP_INIT}, state_layout=None,
        reference=wkv4.wkv4, oracle=wkv4.wkv4_numpy,
        body_module=wkv4_onnx, bodies=("scan", "chunked", "gemm"), default_body="gemm",
        chunks={"chunked": 4, "gemm": 16},
        kernel=KernelSpec(unit="wkv4", launches=("seq", "seq4", "chunked", "step"), entry="wkv4_{launch}_{io}",
                          scalars=seq, io_inputs=("k", "v")),
        shape_like=("k", "aa", "aa", "aa"), dtype_like=("k", "aa", "aa", "aa"), aot_by_default=True,
    )  # fmt: skip


def _head_op(module: ModuleType, body_module: ModuleType, bodies: tuple[str, ...], default_body: str) -> OpSpec:
    """WKV5, WKV6, WKV7: inputs [B, T, H, N] but for w_raw and u (per op), state [B, H, N, N]."""
    name = module.OP_TYPE
    w_dims: Dims = ("H", "N") if name == "WKV5" else _SEQ4  # WKV5's decay is per head, not per token
    dims: dict[str, Dims] = {n: _SEQ4 for n in (*module.INPUTS, *module.OUTPUTS)}
    dims |= {"w_raw": w_dims, "u": ("H", "N"), "state_in": _HEAD_STATE, "state_out": _HEAD_STATE}
    return OpSpec(
        name=name, module=module, inputs=module.INPUTS, outputs=module.OUTPUTS, dims=dims, sizes=_SEQ4,
        state=(("state_in", "state_out"),), state_initial={"state_in": 0.0}, state_layout=module.STATE_LAYOUT,
        reference=getattr(module, name.lower()), oracle=getattr(module, f"{name.lower()}_numpy"),
        body_module=body_module, bodies=bodies, default_body=default_body,
        chunks={"chunked": 4} if "chunked" in bodies else {},
        kernel=KernelSpec(unit="wkv_heads", launches=("head",), entry=name.lower() + "_n{n}_{io}",
                          scalars=("B", "T", "H"), io_inputs=tuple(n for n in module.INPUTS if n in _HEAD_IO),
                          head_sizes=HEAD_SIZES),
        shape_like=("k", "state_in"), dtype_like=(None, "state_in"),
        aot_by_default=False,  # its AOT front (plugins/trt_aot.py) has never been built: no standard TensorRT here
    )  # fmt: skip


# chunked where it exists (WKV5/6): 1.7-2.9x the scan body from T = 64 on; WKV4: gemm (wkv4_onnx.py)
OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        _wkv4(),
        _head_op(wkv5, wkv6_onnx, ("scan", "chunked"), "chunked"),
        _head_op(wkv6, wkv6_onnx, ("scan", "chunked"), "chunked"),
        _head_op(wkv7, wkv7_onnx, ("scan",), "scan"),  # no chunked WKV7: see wkv7_onnx.py
    )
}
ALL_BODIES = tuple(dict.fromkeys(b for spec in OPS.values() for b in spec.bodies))


def op_spec(name: str) -> OpSpec:
    """The registry entry of op `name` ("WKV4" .. "WKV7"), or a one-line RwkvExportError."""
    if name not in OPS:
        raise RwkvExportError(f"unknown WKV op {name!r}; expected one of {', '.join(OPS)}")
    return OPS[name]


def kernel_units() -> dict[str, list[OpSpec]]:
    """.cu unit -> the ops whose kernels it holds."""
    units: dict[str, list[OpSpec]] = {}
    for spec in OPS.values():
        units.setdefault(spec.kernel.unit, []).append(spec)
    return units
