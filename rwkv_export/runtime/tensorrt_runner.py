"""TensorRT backend: run prefill.plan / step.plan built by `rwkv-export build` (needs a GPU).

    with TensorRTRunner("out/tiny", "step") as runner:
        outputs = runner.infer({"tokens": tokens, "x_att": ..., ...})   # host in, host out

Device-resident state: give the runner a `DeviceState` and omit the state inputs from the feeds.
Each call reads the state from device buffers and writes the new state into a second set
(ping-pong: TensorRT I/O tensors must not alias), then swaps; only logits come back to the host.
A prefill runner and a step runner sharing one DeviceState keep the whole generation on the GPU:

    state = DeviceState.initial_for(Manifest.read(d), batch=1)
    with TensorRTRunner(d, "prefill", state=state) as prefill, TensorRTRunner(d, "step", state=state) as step:
        logits = prefill.infer({"tokens": prompt})["logits"]
        logits = step.infer({"tokens": next_token})["logits"]

Calls (the loader, runtime/loaders.py): trt.Runtime.deserialize_cuda_engine; here ICudaEngine.create_execution_context / num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_dtype, IExecutionContext.set_input_shape /
get_tensor_shape / set_tensor_address / execute_async_v3; CUDA memory and streams through
cuda.bindings.runtime. Written from the docs and type-checked; GPU runs are in tests/tensorrt/test_tensorrt_gpu.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rwkv_export.errors import RwkvExportError
from rwkv_export.manifest import Manifest
from rwkv_export.runtime.base import Runner
from rwkv_export.runtime.loaders import EngineFromPlan

if TYPE_CHECKING:
    import tensorrt as trt

# TensorRT DataType name -> numpy dtype, for the I/O dtypes our graphs use.
NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


# --- CUDA through cuda-python ----------------------------------------------------------------------


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise RwkvExportError(f"the TensorRT runner needs cuda-python ({exc}); pip install 'rwkv-export[tensorrt]'") from exc
    return runtime


def _check(result: Any, what: str) -> Any:
    """Unwrap cuda.bindings' (err, *values) or raise a one-line error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RwkvExportError(f"CUDA {what} failed: {err}; is a GPU with a CUDA 13 driver present?")
    return values[0] if len(values) == 1 else values


class DeviceBuffer:
    """A grow-only cudaMalloc'ed block (reallocated only when a larger shape arrives)."""

    def __init__(self) -> None:
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(_check(_cudart().cudaMalloc(max(nbytes, 1)), "cudaMalloc"))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            _check(_cudart().cudaFree(self.ptr), "cudaFree")
        self.ptr, self.nbytes = 0, 0


def _upload(buf: DeviceBuffer, array: np.ndarray, stream: int) -> int:
    rt = _cudart()
    host = np.ascontiguousarray(array)
    ptr = buf.ensure(host.nbytes)
    kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    _check(rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync H2D")
    # The caller synchronizes before `host` can go away (infer() waits on the stream).
    return ptr


def _download(ptr: int, shape: tuple[int, ...], dtype: Any, stream: int) -> np.ndarray:
    rt = _cudart()
    out = np.empty(shape, dtype)
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    _check(rt.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, kind, stream), "cudaMemcpyAsync D2H")
    return out


# --- device-resident recurrent state ---------------------------------------------------------------


class DeviceState:
    """The model's state tensors on the device, two buffers each (read one, write the other)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], initial: dict[str, np.ndarray]) -> None:
        self.shapes = shapes
        self.initial = initial
        self.current = {name: DeviceBuffer() for name in shapes}
        self.spare = {name: DeviceBuffer() for name in shapes}

    @classmethod
    def initial_for(cls, manifest: Manifest, batch: int) -> DeviceState:
        """State buffers for `batch` rows from the manifest's state (shapes; constants or initial files)."""
        initial = manifest.initial_state(batch)
        return cls({name: value.shape for name, value in initial.items()}, initial)

    def reset(self, stream: int = 0) -> None:
        """Every state tensor back to its initial value (aa = bb = 0, pp = -1e38, a v6 time_state, ...)."""
        for name in self.shapes:
            _upload(self.current[name], np.ascontiguousarray(self.initial[name], np.float32), stream)
        _check(_cudart().cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def swap(self) -> None:
        self.current, self.spare = self.spare, self.current

    def to_host(self, stream: int = 0) -> dict[str, np.ndarray]:
        out = {n: _download(self.current[n].ptr, s, np.float32, stream) for n, s in self.shapes.items()}
        _check(_cudart().cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return out

    def free(self) -> None:
        for buf in (*self.current.values(), *self.spare.values()):
            buf.free()


# --- the runner ------------------------------------------------------------------------------------


class TensorRTRunner(Runner):
    """Runs one engine of an exported+built model directory; `infer(feeds) -> outputs` on the host.

    The Runner contract of OrtRunner: the manifest's tensor specs check every feed, the engine comes
    from a loader (EngineFromPlan: sha256, plugin, deserialisation), initial states are the manifest's.
    """

    def __init__(
        self,
        model_dir: str | Path,
        graph: str = "step",
        state: DeviceState | None = None,
        name: str | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        manifest = manifest or Manifest.read(self.model_dir)
        spec = manifest.graph(graph)
        has_tokens = any(t.role == "tokens" for t in spec.inputs)
        super().__init__(spec.inputs, spec.outputs, manifest.model.vocab_size if has_tokens else None)
        self.loader = EngineFromPlan(manifest, graph)
        self.entry = self.loader.entry
        self.graph = graph
        self.state = state
        self.name = name or f"tensorrt[{graph}]"
        self.state_outputs = {o.name: o.feeds for o in spec.outputs if o.feeds}  # out -> in

    def required_inputs(self, feeds: Mapping[str, Any]) -> list[str]:
        if self.state is not None and not any(n in feeds for n in self.state_outputs.values()):
            return [n for n in self.input_names if n not in self.state.shapes]  # the state is on the device
        return self.input_names

    def _activate(self) -> None:
        """Load (check, register the plugin, deserialize), make a context and a stream."""
        loaded = self.loader()
        self._trt, self._loaded, self._engine = loaded.trt, loaded, loaded.engine
        engine, trt_mod = loaded.engine, loaded.trt
        self._context: trt.IExecutionContext = engine.create_execution_context()
        self._stream = int(_check(_cudart().cudaStreamCreate(), "cudaStreamCreate"))
        self._names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in self._names if engine.get_tensor_mode(n) == trt_mod.TensorIOMode.INPUT]
        self._outputs = [n for n in self._names if n not in self._inputs]
        self._buffers = {n: DeviceBuffer() for n in self._names}

    def _deactivate(self) -> None:
        _check(_cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        for buf in self._buffers.values():
            buf.free()
        _check(_cudart().cudaStreamDestroy(self._stream), "cudaStreamDestroy")
        del self._context, self._engine, self._loaded

    def _dtype(self, name: str) -> Any:
        kind = self._engine.get_tensor_dtype(name).name
        if kind not in NUMPY_DTYPES:
            raise RwkvExportError(f"engine tensor {name!r} has dtype {kind}, which the runner does not map")
        return NUMPY_DTYPES[kind]

    def _infer(self, feeds: Mapping[str, Any], copy_state: bool | None = None, **options: Any) -> dict[str, np.ndarray]:
        """Run once. Host feeds in; host outputs out (state outputs too unless the state is on the device)."""
        device_state = self.state is not None and not any(n in feeds for n in self.state_outputs.values())
        ctx, stream = self._context, self._stream
        if device_state and self.state is not None and any(b.ptr == 0 for b in self.state.current.values()):
            self.state.reset(stream)  # first call: start from the initial state
        for name in self._inputs:
            if device_state and self.state is not None and name in self.state.shapes:
                ctx.set_input_shape(name, self.state.shapes[name])
                ctx.set_tensor_address(name, self.state.current[name].ptr)
                continue
            if name not in feeds:
                raise RwkvExportError(f"{self.name}: missing input {name!r}; expected {', '.join(self._inputs)}")
            array = np.asarray(feeds[name], self._dtype(name))
            ctx.set_input_shape(name, array.shape)
            ctx.set_tensor_address(name, _upload(self._buffers[name], array, stream))
        shapes: dict[str, tuple[int, ...]] = {}
        for name in self._outputs:
            dims = ctx.get_tensor_shape(name)
            shape = tuple(int(dims[i]) for i in range(len(dims)))
            shapes[name] = shape
            nbytes = int(np.prod(shape)) * np.dtype(self._dtype(name)).itemsize
            if device_state and self.state is not None and name in self.state_outputs:
                ptr = self.state.spare[self.state_outputs[name]].ensure(nbytes)
            else:
                ptr = self._buffers[name].ensure(nbytes)
            ctx.set_tensor_address(name, ptr)
        if not ctx.execute_async_v3(stream):
            raise RwkvExportError(f"{self.name}: execute_async_v3 failed (see the TensorRT log)")
        results = {}
        for name in self._outputs:
            if device_state and name in self.state_outputs and not copy_state:
                continue
            ptr = (
                self.state.spare[self.state_outputs[name]].ptr
                if device_state and self.state is not None and name in self.state_outputs
                else self._buffers[name].ptr
            )
            results[name] = _download(ptr, shapes[name], self._dtype(name), stream)
        _check(_cudart().cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        if device_state and self.state is not None:
            self.state.swap()
        return results
