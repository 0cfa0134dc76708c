"""Every WKV op of the registry as a class-based Python IPluginV3 (TensorRT 10/11 and TensorRT-RTX).

The ONNX parser maps every node `WKVn` with `plugin_namespace="rwkv"` to the creator `register(trt)`
put in the global plugin registry (one creator per op). Build time (no GPU needed): output shapes
and dtypes from the op's registry entry (`shape_like`, `dtype_like`, `check_shapes`; the AOT front,
plugins/trt_aot.py, reads the same); the plan records the plugin's fields (field format, kernel
launch form, sha256 of the kernel source). Run time: `enqueue` hands TensorRT's tensor addresses and
stream to plugins/launcher.py, which loads the NVRTC-compiled kernels in TensorRT's CUDA context and
launches them.

Plugin classes are defined per (TensorRT module, op) on first use, because they must derive from
that module's base classes (`tensorrt` or `tensorrt_rtx_bindings`); importing this file imports no
TensorRT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from rwkv_export.ops.registry import OPS, PLUGIN_NAMESPACE, PLUGIN_VERSION, OpSpec, op_spec

LOG = logging.getLogger(__name__)

FIELD_FORMAT = 1  # bump when the serialized fields change meaning
IO_SUFFIX = {"float32": "f32", "float16": "f16"}

T_ = TypeVar("T_")


def serialized_fields(op: str) -> tuple[str, str, str]:
    """The fields a plan records per plugin: the field format (e.g. "wkv4_format"), launch form, kernel sha256."""
    return f"{op.lower()}_format", "launch_form", "kernel_sha256"


def outputs_like(inputs: Sequence[T_], op: str) -> list[T_]:
    """The per-output source of shape, e.g. WKV4 [like(k), like(aa), like(aa), like(aa)]."""
    spec = op_spec(op)
    return [inputs[spec.inputs.index(name)] for name in spec.shape_like]


def kernel_sha256(op: str) -> str:
    """sha256 of the op's kernel source (unit + shared header): recorded in the plan, compared on load."""
    from rwkv_export.kernels import nvrtc

    return nvrtc.source_sha256(op_spec(op).kernel.unit)


# --- the IPluginV3 classes, defined against whichever TensorRT module is in use ------------------

_CLASSES: dict[tuple[str, str], tuple[type, type]] = {}
_CREATORS: dict[tuple[str, str], Any] = {}


def plugin_classes(trt_module: ModuleType, op: str) -> tuple[type, type]:
    """(Plugin, Creator) of one op, deriving from `trt_module`'s IPluginV3 / IPluginCreatorV3One."""
    key = (trt_module.__name__, op)
    if key not in _CLASSES:
        _CLASSES[key] = _define(trt_module, op_spec(op))
    return _CLASSES[key]


def register(trt_module: ModuleType, events: list[dict[str, Any]] | None = None, launch: str = "auto") -> dict[str, Any]:
    """Register one creator per op of the registry in namespace "rwkv" of the global plugin registry;
    return them by op name.

    `launch`: the kernel launch form ("auto" picks per shape at run time), recorded in the plan; ops
    without that launch form (e.g. "seq4" for WKV5/6/7) take "auto".
    `events`: when given, every build-time call a plugin receives is appended to it (the build
    report, and what tests assert: configure_plugin's min/opt/max per profile).
    """
    for op_name, spec in OPS.items():
        key = (trt_module.__name__, op_name)
        op_launch = launch if launch in spec.kernel.launches else "auto"
        if key in _CREATORS:  # once per process: a second register_creator for the same name fails
            creator = _CREATORS[key]
            creator.launch, creator.events = op_launch, events
            continue
        _, creator_cls = plugin_classes(trt_module, op_name)
        creator = creator_cls(launch=op_launch, events=events)
        registry = trt_module.get_plugin_registry()
        if not registry.register_creator(creator, PLUGIN_NAMESPACE):
            raise RuntimeError(f"TensorRT refused to register plugin {PLUGIN_NAMESPACE}::{op_name} v{PLUGIN_VERSION}")
        _CREATORS[key] = creator  # also keeps the Python object alive as long as TensorRT uses it
    return {op_name: _CREATORS[(trt_module.__name__, op_name)] for op_name in OPS}


def _dims(dims: Any) -> list[int]:
    return [int(dims[i]) for i in range(len(dims))]


def _field(trt: Any, name: str, data: np.ndarray, kind: Any) -> Any:
    """trt.PluginField(name, data, kind); the stubs want a FallbackString where the bindings take str."""
    return trt.PluginField(name, data, kind)


def _define(trt_module: ModuleType, spec: OpSpec) -> tuple[type, type]:
    """The op's plugin and creator classes. Over 60 lines because it is a class factory: the classes
    must derive from `trt_module`'s bases, known only at run time; each method is a few lines."""
    if TYPE_CHECKING:
        import tensorrt as trt  # the stubs: mypy checks these classes against TensorRT's API
    else:
        trt = trt_module

    dtype_names = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16"}

    io_positions = spec.io_positions
    first_io = io_positions[0]
    dtype_src = [None if name is None else spec.inputs.index(name) for name in spec.dtype_like]
    fmt_field = serialized_fields(spec.name)[0]
    kernel = kernel_sha256(spec.name)

    def out_type(pos: int, inputs: Sequence[Any]) -> Any:
        """Output `pos`'s dtype: that of its source input, or float32."""
        src = dtype_src[pos]
        return trt.DataType.FLOAT if src is None else inputs[src]

    class WKVPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        """One WKVn node. Serialized fields: the field format, the launch form, the kernel's sha256."""

        def __init__(self, launch: str, kernel: str, events: list[dict[str, Any]] | None = None) -> None:
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            # Python plugins must set every attribute explicitly (IPluginV3 docs).
            self.num_outputs = len(spec.outputs)
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_name = spec.name
            self.plugin_version = PLUGIN_VERSION
            self.launch = launch  # kernel launch form
            self.kernel = kernel  # sha256 of the kernel source when the engine was built
            self.events = events
            self.io_dtype = "float32"
            self.sizes: tuple[int, ...] = ()

        def _log(self, method: str, **data: Any) -> None:
            if self.events is not None:
                self.events.append({"method": method, **data})

        # --- core / lifetime
        def get_capability_interface(self, type: Any) -> Any:
            return self

        def clone(self) -> WKVPlugin:
            self._log("clone")
            twin = WKVPlugin(self.launch, self.kernel, self.events)
            twin.io_dtype, twin.sizes = self.io_dtype, self.sizes
            return twin

        # --- build
        def get_output_data_types(self, input_types: list[trt.DataType]) -> list[trt.DataType]:
            self._log("get_output_data_types", inputs=[str(t) for t in input_types])
            return [out_type(i, input_types) for i in range(len(spec.outputs))]

        def get_output_shapes(
            self, inputs: list[trt.DimsExprs], shape_inputs: list[trt.DimsExprs], expr_builder: trt.IExprBuilder
        ) -> list[trt.DimsExprs]:
            self._log("get_output_shapes", ranks=[len(d) for d in inputs])
            return [trt.DimsExprs([d[i] for i in range(len(d))]) for d in outputs_like(inputs, spec.name)]  # copies

        def supports_format_combination(self, pos: int, in_out: list[trt.DynamicPluginTensorDesc], num_inputs: int) -> bool:
            desc = in_out[pos].desc
            if desc.format != trt.TensorFormat.LINEAR:
                return False
            if pos >= num_inputs:  # an output: exactly its rule's dtype
                return bool(desc.type == out_type(pos - num_inputs, [d.desc.type for d in in_out[:num_inputs]]))
            if pos in io_positions:  # the IO inputs share one dtype, float32 or float16
                return desc.type in dtype_names and (pos == first_io or desc.type == in_out[first_io].desc.type)
            return bool(desc.type == trt.DataType.FLOAT)

        def configure_plugin(self, inp: list[trt.DynamicPluginTensorDesc], out: list[trt.DynamicPluginTensorDesc]) -> None:
            # Called once per optimization profile with that profile's min/opt/max shapes.
            shapes = {b: [_dims(getattr(d, b)) for d in inp] for b in ("min", "opt", "max")}
            self._log("configure_plugin", **shapes, outputs=[_dims(d.desc.dims) for d in out])
            for bound in shapes.values():
                spec.check_shapes(bound)
            self.io_dtype = dtype_names[inp[first_io].desc.type]

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
                _field(trt, fmt_field, np.array([FIELD_FORMAT], np.int32), trt.PluginFieldType.INT32),
                _field(trt, "launch_form", _chars(self.launch), trt.PluginFieldType.CHAR),
                _field(trt, "kernel_sha256", _chars(self.kernel), trt.PluginFieldType.CHAR),
            ]
            # The stubs type the return as PluginFieldCollection_, of which the bindings accept
            # a PluginFieldCollection (the documented Python plugin pattern).
            return trt.PluginFieldCollection(fields)  # type: ignore[return-value]

        def on_shape_change(self, inp: list[trt.PluginTensorDesc], out: list[trt.PluginTensorDesc]) -> None:
            self.sizes = spec.check_shapes([_dims(d.dims) for d in inp])
            self.io_dtype = dtype_names[inp[first_io].type]

        def attach_to_context(self, resource_context: Any) -> WKVPlugin:
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
            sizes = spec.check_shapes([_dims(d.dims) for d in input_desc])
            if any(s == 0 for i, s in enumerate(sizes) if i != 1):  # empty batch or width: nothing to do (T == 0 copies the state)
                return
            from rwkv_export.kernels.launcher import launch_raw

            io = IO_SUFFIX[dtype_names[input_desc[first_io].type]]
            launch_raw(spec.name, inputs, outputs, sizes, io=io, launch=self.launch, stream=stream)

    class WKVCreator(trt.IPluginCreatorV3One):
        """Creates the plugin: at build time from the creator's settings, at run time from the plan's fields."""

        def __init__(self, launch: str = "auto", events: list[dict[str, Any]] | None = None) -> None:
            trt.IPluginCreatorV3One.__init__(self)
            self.name = spec.name
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            # The node carries no attributes the plugin needs; the parser forwards only listed fields.
            self.field_names = trt.PluginFieldCollection([])  # type: ignore[assignment]  # as above
            self.launch = launch
            self.events = events

        def create_plugin(self, name: str, fc: trt.PluginFieldCollection_, phase: trt.TensorRTPhase) -> WKVPlugin:
            fields = {fc[i].name: fc[i].data for i in range(len(fc))}
            if self.events is not None:
                self.events.append({"method": "create_plugin", "name": name, "phase": str(phase), "fields": sorted(fields)})
            if phase == trt.TensorRTPhase.RUNTIME:
                fmt = int(np.asarray(fields.get(fmt_field, [0])).ravel()[0])
                if fmt != FIELD_FORMAT:
                    raise RuntimeError(f"{spec.name} plan fields are format {fmt}, this plugin reads {FIELD_FORMAT}: rebuild the engine")
                built_with = _text(fields["kernel_sha256"])
                if built_with != kernel:  # same op, other kernel code: run it, but say so
                    LOG.warning("%s engine was built with kernels %s, running %s", spec.name, built_with[:12], kernel[:12])
                return WKVPlugin(_text(fields["launch_form"]), built_with, self.events)
            return WKVPlugin(self.launch, kernel, self.events)

    WKVPlugin.__name__ = WKVPlugin.__qualname__ = f"{spec.name}Plugin"
    WKVCreator.__name__ = WKVCreator.__qualname__ = f"{spec.name}Creator"
    return WKVPlugin, WKVCreator


def _chars(text: str) -> np.ndarray:
    """A str as a CHAR plugin field (int8 bytes)."""
    return np.frombuffer(text.encode(), np.int8)


def _text(data: Any) -> str:
    """A CHAR plugin field (numpy int8/bytes, maybe NUL-terminated) as str."""
    raw = data.tobytes() if hasattr(data, "tobytes") else bytes(data)
    return raw.split(b"\0", 1)[0].decode()
