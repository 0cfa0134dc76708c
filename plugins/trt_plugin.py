"""rwkv::WKV4 as a class-based Python IPluginV3 (TensorRT 10/11 and TensorRT-RTX).

The ONNX parser maps every node `WKV4` with `plugin_namespace="rwkv"` to the creator registered by
`register(trt)`. Build time (no GPU needed): output shapes/dtypes from `outputs_like`, the one
shape rule shared with the decorator/AOT front (`plugins/trt_aot.py`); the plan records the
plugin's fields (field format, kernel launch form, sha256 of plugins/wkv4.cu). Run time: `enqueue`
hands TensorRT's tensor addresses and stream to `plugins.launcher.wkv4_launch_raw`, which loads
the PTX of the same wkv4.cu (NVRTC, cached) in TensorRT's CUDA context and launches it.

Plugin classes are defined per TensorRT module (`tensorrt` or `tensorrt_rtx_bindings`) on first use,
because they must derive from that module's base classes; importing this file imports no TensorRT.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from custom_ops import wkv4 as op

LOG = logging.getLogger(__name__)

PLUGIN_NAME = op.OP_TYPE  # "WKV4"
PLUGIN_NAMESPACE = op.PLUGIN_NAMESPACE  # "rwkv"
PLUGIN_VERSION = op.PLUGIN_VERSION  # "1"
FIELD_FORMAT = 1  # bump when the serialized fields change meaning
SERIALIZED_FIELDS = ("wkv4_format", "launch_form", "kernel_sha256")

# --- the shared shape/dtype rule (used by both fronts) -------------------------------------------
# Output i has the shape and dtype of input OUTPUT_LIKE[i]: y ~ k [B, T, C]; aa/bb/pp_out ~ aa [B, C].
OUTPUT_LIKE = (op.INPUTS.index("k"), op.INPUTS.index("aa"), op.INPUTS.index("aa"), op.INPUTS.index("aa"))
IO_INPUTS = (op.INPUTS.index("k"), op.INPUTS.index("v"))  # float32 or float16 (the kernel's IO type); the rest float32
IO_SUFFIX = {"float32": "f32", "float16": "f16"}

T_ = TypeVar("T_")


def outputs_like(inputs: Sequence[T_]) -> list[T_]:
    """The per-output source of shape and dtype: [like(k), like(aa), like(aa), like(aa)]."""
    return [inputs[i] for i in OUTPUT_LIKE]


def kernel_entry(io_dtype: str) -> str:
    """PTX entry for k/v/y of `io_dtype` ("float32"/"float16"), e.g. 'wkv4_seq_f32'."""
    return f"wkv4_seq_{IO_SUFFIX[io_dtype]}"


def check_shapes(shapes: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """(B, T, C) from the 7 input shapes; -1 (dynamic) passes. Raises ValueError on a mismatch."""
    if len(shapes) != len(op.INPUTS):
        raise ValueError(f"WKV4 takes {len(op.INPUTS)} inputs {op.INPUTS}, got {len(shapes)}")
    k = list(shapes[2])
    if len(k) != 3:
        raise ValueError(f"WKV4 input k must be [B, T, C], got shape {k}")
    batch, seq, channels = k
    expect = {0: [channels], 1: [channels], 3: k, 4: [batch, channels], 5: [batch, channels], 6: [batch, channels]}
    for i, want in expect.items():
        got = list(shapes[i])
        if len(got) != len(want) or any(g != w and -1 not in (g, w) for g, w in zip(got, want)):
            raise ValueError(f"WKV4 input {op.INPUTS[i]} must have shape {want} (from k {k}), got {got}")
    return batch, seq, channels


def compile_ptx(arch: str) -> str:
    """PTX of plugins/wkv4.cu for `arch` (NVRTC, no GPU). The one wiring point to plugins/nvrtc.py."""
    from plugins import nvrtc

    return nvrtc.compile_ptx(arch)


def kernel_sha256() -> str:
    """sha256 of plugins/wkv4.cu: recorded in the plan, compared when the engine is loaded."""
    from plugins import nvrtc

    return hashlib.sha256(nvrtc.SOURCE_PATH.read_bytes()).hexdigest()


def _launch(pointers: Sequence[int], bts: tuple[int, int, int], io_dtype: str, form: str, stream: int) -> None:
    """Enqueue the kernel on TensorRT's stream, in the current (TensorRT's) CUDA context."""
    from plugins import launcher

    batch, seq, channels = bts
    launcher.wkv4_launch_raw(*pointers, B=batch, T=seq, C=channels, io=IO_SUFFIX[io_dtype], form=form, stream=stream)


# --- the IPluginV3 classes, defined against whichever TensorRT module is in use ------------------

_CLASSES: dict[str, tuple[type, type]] = {}
_CREATORS: dict[str, Any] = {}


def plugin_classes(trt_module: ModuleType) -> tuple[type, type]:
    """(WKV4Plugin, WKV4Creator) deriving from `trt_module`'s IPluginV3 / IPluginCreatorV3One."""
    key = trt_module.__name__
    if key not in _CLASSES:
        _CLASSES[key] = _define(trt_module)
    return _CLASSES[key]


def register(trt_module: ModuleType, events: list[dict[str, Any]] | None = None, form: str = "auto") -> Any:
    """Register the creator in namespace "rwkv" of the global plugin registry; return it.

    `form`: the launcher's kernel form ("auto" picks per shape at run time), recorded in the plan.
    `events`: when given, every build-time call the plugin receives is appended to it (the build
    report, and what tests assert: configure_plugin's min/opt/max per profile).
    """
    key = trt_module.__name__
    if key in _CREATORS:  # once per process: a second register_creator for the same name fails
        creator = _CREATORS[key]
        creator.form, creator.events = form, events
        return creator
    _, creator_cls = plugin_classes(trt_module)
    creator = creator_cls(form=form, events=events)
    registry = trt_module.get_plugin_registry()
    if not registry.register_creator(creator, PLUGIN_NAMESPACE):
        raise RuntimeError(f"TensorRT refused to register plugin {PLUGIN_NAMESPACE}::{PLUGIN_NAME} v{PLUGIN_VERSION}")
    _CREATORS[key] = creator  # also keeps the Python object alive as long as TensorRT uses it
    return creator


def _dims(dims: Any) -> list[int]:
    return [int(dims[i]) for i in range(len(dims))]


def _field(trt: Any, name: str, data: np.ndarray, kind: Any) -> Any:
    """trt.PluginField(name, data, kind); the stubs want a FallbackString where the bindings take str."""
    return trt.PluginField(name, data, kind)


def _define(trt_module: ModuleType) -> tuple[type, type]:
    if TYPE_CHECKING:
        import tensorrt as trt  # the stubs: mypy checks these classes against TensorRT's API
    else:
        trt = trt_module

    dtype_names = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16"}

    class WKV4Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        """One WKV4 node. Serialized fields: the field format, the launch form, the kernel's sha256."""

        def __init__(self, form: str, kernel: str, events: list[dict[str, Any]] | None = None) -> None:
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            # Python plugins must set every attribute explicitly (IPluginV3 docs).
            self.num_outputs = len(op.OUTPUTS)
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_name = PLUGIN_NAME
            self.plugin_version = PLUGIN_VERSION
            self.form = form
            self.kernel = kernel  # sha256 of wkv4.cu when the engine was built
            self.events = events
            self.io_dtype = "float32"
            self.bts: tuple[int, int, int] = (0, 0, 0)

        def _log(self, method: str, **data: Any) -> None:
            if self.events is not None:
                self.events.append({"method": method, **data})

        # --- core / lifetime
        def get_capability_interface(self, type: Any) -> Any:
            return self

        def clone(self) -> WKV4Plugin:
            self._log("clone")
            twin = WKV4Plugin(self.form, self.kernel, self.events)
            twin.io_dtype, twin.bts = self.io_dtype, self.bts
            return twin

        # --- build
        def get_output_data_types(self, input_types: list[trt.DataType]) -> list[trt.DataType]:
            self._log("get_output_data_types", inputs=[str(t) for t in input_types])
            return outputs_like(input_types)

        def get_output_shapes(
            self, inputs: list[trt.DimsExprs], shape_inputs: list[trt.DimsExprs], expr_builder: trt.IExprBuilder
        ) -> list[trt.DimsExprs]:
            self._log("get_output_shapes", ranks=[len(d) for d in inputs])
            return [trt.DimsExprs([d[i] for i in range(len(d))]) for d in outputs_like(inputs)]  # copies

        def supports_format_combination(self, pos: int, in_out: list[trt.DynamicPluginTensorDesc], num_inputs: int) -> bool:
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if pos >= num_inputs:  # an output: exactly the dtype of the input it is shaped like
                return bool(desc.type == in_out[OUTPUT_LIKE[pos - num_inputs]].desc.type)
            if pos in IO_INPUTS:  # v must match k; k may be float32 or float16
                return desc.type in dtype_names and (pos == IO_INPUTS[0] or desc.type == in_out[IO_INPUTS[0]].desc.type)
            return bool(desc.type == trt.DataType.FLOAT)

        def configure_plugin(self, inp: list[trt.DynamicPluginTensorDesc], out: list[trt.DynamicPluginTensorDesc]) -> None:
            # Called once per optimization profile with that profile's min/opt/max shapes.
            shapes = {b: [_dims(getattr(d, b)) for d in inp] for b in ("min", "opt", "max")}
            self._log("configure_plugin", **shapes, outputs=[_dims(d.desc.dims) for d in out])
            for bound in shapes.values():
                check_shapes(bound)
            self.io_dtype = dtype_names[inp[2].desc.type]

        def get_workspace_size(self, inp: list[trt.DynamicPluginTensorDesc], out: list[trt.DynamicPluginTensorDesc]) -> int:
            return 0  # the scan keeps its state in registers

        def get_valid_tactics(self) -> list[int]:
            return []  # one kernel, nothing to time

        def set_tactic(self, tactic: int) -> None:
            pass

        # --- runtime
        def get_fields_to_serialize(self) -> trt.PluginFieldCollection_:
            self._log("get_fields_to_serialize")
            fields = [
                _field(trt, "wkv4_format", np.array([FIELD_FORMAT], np.int32), trt.PluginFieldType.INT32),
                _field(trt, "launch_form", _chars(self.form), trt.PluginFieldType.CHAR),
                _field(trt, "kernel_sha256", _chars(self.kernel), trt.PluginFieldType.CHAR),
            ]
            # The stubs type the return as PluginFieldCollection_, of which the bindings accept
            # a PluginFieldCollection (the documented Python plugin pattern).
            return trt.PluginFieldCollection(fields)  # type: ignore[return-value]

        def on_shape_change(self, inp: list[trt.PluginTensorDesc], out: list[trt.PluginTensorDesc]) -> None:
            self.bts = check_shapes([_dims(d.dims) for d in inp])
            self.io_dtype = dtype_names[inp[2].type]

        def attach_to_context(self, resource_context: Any) -> WKV4Plugin:
            return self.clone()

        def enqueue(
            self,
            input_desc: list[trt.PluginTensorDesc],
            output_desc: list[trt.PluginTensorDesc],
            inputs: list[int],
            outputs: list[int],
            workspace: int,
            stream: int,
        ) -> None:
            batch, seq, channels = check_shapes([_dims(d.dims) for d in input_desc])
            if batch * channels == 0:
                return
            _launch([*inputs, *outputs], (batch, seq, channels), dtype_names[input_desc[2].type], self.form, stream)

    class WKV4Creator(trt.IPluginCreatorV3One):
        """Creates WKV4Plugin: at build time from the creator's settings, at run time from the plan's fields."""

        def __init__(self, form: str = "auto", events: list[dict[str, Any]] | None = None) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name = PLUGIN_NAME
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            # The node carries no attributes the plugin needs; the parser forwards only listed fields.
            self.field_names = trt.PluginFieldCollection([])  # type: ignore[assignment]  # as above
            self.form = form
            self.events = events

        def create_plugin(self, name: str, fc: trt.PluginFieldCollection_, phase: trt.TensorRTPhase) -> WKV4Plugin:
            fields = {fc[i].name: fc[i].data for i in range(len(fc))}
            if self.events is not None:
                self.events.append({"method": "create_plugin", "name": name, "phase": str(phase), "fields": sorted(fields)})
            if phase == trt.TensorRTPhase.RUNTIME:
                fmt = int(np.asarray(fields.get("wkv4_format", [0])).ravel()[0])
                if fmt != FIELD_FORMAT:
                    raise RuntimeError(f"WKV4 plan fields are format {fmt}, this plugin reads {FIELD_FORMAT}: rebuild the engine")
                built_with = _text(fields["kernel_sha256"])
                if built_with != kernel_sha256():  # same op, other kernel code: run it, but say so
                    LOG.warning("engine was built with wkv4.cu %s, running %s", built_with[:12], kernel_sha256()[:12])
                return WKV4Plugin(_text(fields["launch_form"]), built_with, self.events)
            return WKV4Plugin(self.form, kernel_sha256(), self.events)

    return WKV4Plugin, WKV4Creator


def _chars(text: str) -> np.ndarray:
    """A str as a CHAR plugin field (int8 bytes)."""
    return np.frombuffer(text.encode(), np.int8)


def _text(data: Any) -> str:
    """A CHAR plugin field (numpy int8/bytes, maybe NUL-terminated) as str."""
    raw = data.tobytes() if hasattr(data, "tobytes") else bytes(data)
    return raw.split(b"\0", 1)[0].decode()
