"""Loaders: what a runner runs, made apart from running it (Polygraphy's SessionFromOnnx / EngineFromBytes).

    session = SessionFromOnnx(path, "cpu", threads)()          # an onnxruntime.InferenceSession
    loaded = EngineFromPlan(manifest, "step")()                # .trt, .engine (and what keeps it alive)

A loader checks its inputs and turns every failure into one line; `engines_unavailable(manifest)`
says why a manifest's TensorRT engines cannot run here (None when they can).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rwkv_export.errors import RwkvExportError, first_line
from rwkv_export.manifest import Engine, Manifest
from rwkv_export.manifest.files import checked_sha256

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
PROVIDER_CHOICES = ("auto", *PROVIDERS)


def resolve_providers(provider: str) -> list[str]:
    """Map cpu|cuda|tensorrt|auto to an ORT provider list this build has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "auto":
        for name in ("tensorrt", "cuda", "cpu"):
            if PROVIDERS[name][0] in available:
                return [p for p in PROVIDERS[name] if p in available]
    if provider not in PROVIDERS:
        raise RwkvExportError(f"unknown provider '{provider}' (expected one of {', '.join(PROVIDER_CHOICES)})")
    wanted = PROVIDERS[provider][0]
    if wanted not in available:
        hint = " (install onnxruntime-gpu in place of onnxruntime)" if provider != "cpu" else ""
        raise RwkvExportError(f"ONNX Runtime provider '{wanted}' is not available{hint}; this build has {', '.join(available)}")
    return [p for p in PROVIDERS[provider] if p in available]


class SharedWeights:
    """An export's shared weight file (weights.data), mapped once read-only; every session made with it
    is handed its tensors as user initializers (SessionOptions.add_initializer) and runs without
    prepacking, so the prefill and step sessions read the one mapping in place. Keep it alive as long
    as the sessions.

    Measured (benchmarks/export_scale.py's figures; a 0.44B RWKV-7, float32, 1.77 GB of weights, ORT
    1.32 CPU, 2 threads, both sessions run): each session loading its own (prepacked) copy: RSS 3.06 GB,
    load 3.8 s, step 65-69 ms; this: RSS 1.62 GB, load 0.5 s, step 67 ms. Without prepacking but with
    each session mapping the file itself the pages are shared (PSS 1.59 GB) yet counted twice in RSS.
    A float16 export gains less (3.3 -> 2.96 GB): ORT's CPU kernels cast its matrices to float32 per session."""

    def __init__(self, path: Path) -> None:
        import numpy as np

        self.path = path
        self.map = np.memmap(path, dtype=np.uint8, mode="r")
        self.values: dict[str, Any] = {}  # initializer name -> OrtValue over the map

    def add_to(self, options: Any, model_path: Path) -> None:
        """Give `options` every initializer of `model_path` that lives in this file."""
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx.helper import tensor_dtype_to_np_dtype

        options.add_session_config_entry("session.disable_prepacking", "1")  # prepacking copies every matrix
        model = onnx.load(str(model_path), load_external_data=False)  # the graph only: a few MB
        for t in model.graph.initializer:
            where = {e.key: e.value for e in t.external_data}
            if t.data_location != onnx.TensorProto.EXTERNAL or where.get("location") != self.path.name:
                continue
            if t.name not in self.values:
                dtype = np.dtype(tensor_dtype_to_np_dtype(t.data_type))
                offset, length = int(where.get("offset", 0)), int(where["length"])
                if offset + length > self.map.size:
                    raise RwkvExportError(f"{model_path}: '{t.name}' lies past the end of {self.path.name} (truncated?)")
                array = self.map[offset : offset + length].view(dtype).reshape(tuple(t.dims))
                self.values[t.name] = ort.OrtValue.ortvalue_from_numpy(array)
            options.add_initializer(t.name, self.values[t.name])


class SessionFromOnnx:
    """An ONNX Runtime session for one .onnx file. threads=0 lets ORT pick (all cores). shared: the
    export's SharedWeights, whose tensors the session then reads rather than loading its own copy."""

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int = 0, shared: SharedWeights | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RwkvExportError(f"ONNX file '{self.path}' does not exist")
        self.providers = resolve_providers(provider)
        self.threads = threads
        self.shared = shared

    def __call__(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self.shared is not None:
            self.shared.add_to(options, self.path)
        try:
            return ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types with long messages
            raise RwkvExportError(f"ONNX Runtime cannot load '{self.path}': {first_line(exc)}") from exc


@dataclass
class LoadedEngine:
    trt: Any  # the tensorrt / tensorrt_rtx module
    engine: Any  # ICudaEngine
    runtime: Any  # must outlive the engine
    logger: Any


class EngineFromPlan:
    """A manifest's TensorRT plan for one graph: sha256 checked, plugin registered, deserialised."""

    def __init__(self, manifest: Manifest, graph: str) -> None:
        engine = (manifest.engines or {}).get(graph)
        if engine is None:
            raise RwkvExportError(f"{manifest.directory} has no {graph} engine; run: rwkv-export build {manifest.directory}")
        self.entry: Engine = engine
        self.path = manifest.path(engine.file, f"engines.{graph}.file")
        self.directory = manifest.directory or self.path.parent

    def __call__(self) -> LoadedEngine:
        from rwkv_export.kernels import trt_compat

        checked_sha256({self.path: (self.entry.sha256, f"engines.{self.path.stem}.sha256")}, self.directory)
        trt: Any = trt_compat.load(self.entry.target)
        if self.entry.plugin == "python":  # AOT engines embed the kernel; inlined ones need nothing
            from rwkv_export.kernels import trt_plugin

            trt_plugin.register(trt)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise RwkvExportError(
                f"TensorRT could not deserialize {self.entry.file} (built by {self.entry.target} "
                f"{self.entry.tensorrt_version}, this is {trt.__version__}); rebuild it"
            )
        return LoadedEngine(trt, engine, runtime, logger)


def engines_unavailable(manifest: Manifest) -> str | None:
    """Why the manifest's TensorRT engines cannot run here (None when they can)."""
    engines = manifest.engines or {}
    directory = manifest.directory
    missing = [g for g in manifest.graphs if g not in engines or directory is None or not (directory / engines[g].file).is_file()]
    if missing:
        return f"no TensorRT engine for {', '.join(missing)} in '{directory}' (run: rwkv-export build {directory})"
    from rwkv_export.kernels import trt_compat

    try:
        trt_compat.load(engines[next(iter(engines))].target)
    except (ImportError, ValueError) as exc:  # TensorRTUnavailable is an ImportError
        return str(exc)
    try:
        from cuda.bindings import runtime
    except ImportError:
        return "cuda-python is not installed (pip install 'rwkv-export[tensorrt]')"
    err, count = runtime.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return "no CUDA GPU is visible"
    return None
