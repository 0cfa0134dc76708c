"""What a TensorRT plugin front needs to know about each rwkv:: op, as data (no TensorRT import).

    spec = PLUGIN_OPS["WKV6"]
    spec.inputs, spec.outputs            # the op's names, in node order
    spec.shape_like[i]                   # output i has the shape of input shape_like[i]
    spec.dtype_like[i]                   # ... and the dtype of that input, or None: always float32
    spec.io_inputs                       # inputs that may be float16 (all one dtype); the rest float32
    spec.check_shapes(shapes)            # the op's sizes, e.g. (B, T, H, N); ValueError on a mismatch
    spec.launch(inputs, outputs, sizes, io, form, stream)   # enqueue the kernel (raw addresses)
    spec.kernel_sha256()                 # sha256 of the kernel source the plan records

WKV4 is y ~ k (its dtype too), state ~ aa; WKV5/6/7 are y [B, T, H, N] float32 and state_out ~ state_in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from rwkv_export.ops import MATRIX_OPS, wkv4

Shapes = Sequence[Sequence[int]]


def _match(name: str, got: Sequence[int], want: Sequence[int], source: str) -> None:
    """-1 (dynamic) matches anything."""
    got = list(got)
    if len(got) != len(want) or any(g != w and -1 not in (g, w) for g, w in zip(got, want)):
        raise ValueError(f"input {name} must have shape {list(want)} (from {source}), got {got}")


@dataclass(frozen=True)
class PluginOp:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    shape_like: tuple[int, ...]
    dtype_like: tuple[int | None, ...]
    io_inputs: tuple[int, ...]
    unit: str  # plugins/nvrtc.py UNITS key
    _check: Callable[[Shapes], tuple[int, ...]]
    _launch: Callable[..., object]

    @property
    def field_format_name(self) -> str:
        return f"{self.name.lower()}_format"

    def check_shapes(self, shapes: Shapes) -> tuple[int, ...]:
        if len(shapes) != len(self.inputs):
            raise ValueError(f"{self.name} takes {len(self.inputs)} inputs {self.inputs}, got {len(shapes)}")
        try:
            return self._check(shapes)
        except ValueError as exc:
            raise ValueError(f"{self.name} {exc}") from None

    def launch(self, inputs: Sequence[int], outputs: Sequence[int], sizes: tuple[int, ...], io: str, form: str, stream: int) -> None:
        self._launch(list(inputs), list(outputs), sizes, io, form, stream)

    def kernel_sha256(self) -> str:
        from rwkv_export.kernels import nvrtc

        return nvrtc.source_sha256(self.unit)


def _wkv4_shapes(shapes: Shapes) -> tuple[int, ...]:
    k = list(shapes[2])
    if len(k) != 3:
        raise ValueError(f"input k must be [B, T, C], got shape {k}")
    batch, _, channels = k
    for i, want in {0: [channels], 1: [channels], 3: k, 4: [batch, channels], 5: [batch, channels], 6: [batch, channels]}.items():
        _match(wkv4.INPUTS[i], shapes[i], want, f"k {k}")
    return tuple(k)


def _wkv4_launch(inputs: list[int], outputs: list[int], sizes: tuple[int, ...], io: str, form: str, stream: int) -> None:
    from rwkv_export.kernels import launcher

    B, T, C = sizes
    launcher.wkv4_launch_raw(*inputs, *outputs, B=B, T=T, C=C, io=io, form=form, stream=stream)


def _matrix_shapes(op_name: str, names: tuple[str, ...]) -> Callable[[Shapes], tuple[int, ...]]:
    def check(shapes: Shapes) -> tuple[int, ...]:
        from rwkv_export.kernels.nvrtc import HEAD_SIZES

        k = list(shapes[names.index("k")])
        if len(k) != 4:
            raise ValueError(f"input k must be [B, T, H, N], got shape {k}")
        B, T, H, N = k
        if N != -1 and N not in HEAD_SIZES:
            raise ValueError(f"has no kernel for head size {N} (compiled: {', '.join(map(str, HEAD_SIZES))}); build with --plugin none")
        special = {"u": [H, N], "state_in": [B, H, N, N], "w_raw": [H, N] if op_name == "WKV5" else k}
        for name, shape in zip(names, shapes):
            _match(name, shape, special.get(name, k), f"k {k}")
        return B, T, H, N

    return check


def _matrix_launch(op_name: str) -> Callable[..., None]:
    def launch(inputs: list[int], outputs: list[int], sizes: tuple[int, ...], io: str, form: str, stream: int) -> None:
        from rwkv_export.kernels.matrix_launcher import matrix_launch_raw

        B, T, H, N = sizes
        matrix_launch_raw(op_name, inputs, outputs, B=B, T=T, H=H, N=N, io=io, stream=stream)

    return launch


def _matrix_op(module: ModuleType) -> PluginOp:
    names = tuple(module.INPUTS)
    return PluginOp(
        name=module.OP_TYPE, inputs=names, outputs=tuple(module.OUTPUTS),
        shape_like=(names.index("k"), names.index("state_in")), dtype_like=(None, names.index("state_in")),
        io_inputs=tuple(i for i, n in enumerate(names) if n in ("r", "k", "v", "a", "b")), unit="matrix",
        _check=_matrix_shapes(module.OP_TYPE, names), _launch=_matrix_launch(module.OP_TYPE),
    )


_K, _AA = wkv4.INPUTS.index("k"), wkv4.INPUTS.index("aa")
PLUGIN_OPS: dict[str, PluginOp] = {
    "WKV4": PluginOp(
        name="WKV4", inputs=tuple(wkv4.INPUTS), outputs=tuple(wkv4.OUTPUTS),
        shape_like=(_K, _AA, _AA, _AA), dtype_like=(_K, _AA, _AA, _AA),
        io_inputs=(_K, wkv4.INPUTS.index("v")), unit="wkv4", _check=_wkv4_shapes, _launch=_wkv4_launch,
    ),
    **{name: _matrix_op(m) for name, m in MATRIX_OPS.items()},
}
