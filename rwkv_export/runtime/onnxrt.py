"""ONNX Runtime runner: one InferenceSession per graph, providers chosen by name with fallback.

`--provider auto` tries TensorRT, then CUDA, then CPU (the order ORT itself falls back in); asking
for a provider that this onnxruntime build lacks is a one-line error naming what is installed.

`infer_bound` runs through an IOBinding and leaves chosen outputs on the session's device as
OrtValues that can be fed straight back in: under CUDA the recurrent state never visits the host.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError
from rwkv_export.runtime.base import Runner

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


class OrtRunner(Runner):
    """Runs one .onnx file. threads=0 lets ORT pick (all cores)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise RwkvExportError(f"ONNX file '{self.path}' does not exist")
        self.providers = resolve_providers(provider)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._options = options
        self.session: ort.InferenceSession | None = None
        try:
            probe = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types with long messages
            raise RwkvExportError(f"ONNX Runtime cannot load '{self.path}': {str(exc).splitlines()[0][:300]}") from exc
        self.session = probe
        super().__init__([i.name for i in probe.get_inputs()], [o.name for o in probe.get_outputs()])
        self.name = f"onnxruntime[{self.providers[0].replace('ExecutionProvider', '')}]"

    @property
    def device(self) -> str:
        """Where the first provider keeps tensors: "cuda" for the CUDA and TensorRT providers, else "cpu"."""
        return "cuda" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"

    def _infer(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        assert self.session is not None
        if any(not isinstance(v, np.ndarray) for v in feeds.values()):  # an OrtValue from infer_bound
            return {k: _host(v) for k, v in self.infer_bound(feeds, ()).items()}
        outputs = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outputs))

    def infer_bound(self, feeds: Mapping[str, Any], keep_on_device: Collection[str], device_id: int = 0) -> dict[str, Any]:
        """Run with IO binding: feeds are numpy arrays or OrtValues; outputs named in `keep_on_device`
        come back as OrtValues on `self.device`, the others as numpy arrays."""
        import onnxruntime as ort

        assert self.session is not None
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            # Device outputs are allocated by ORT on that device (shapes are dynamic, so not pre-bound).
            binding.bind_output(name, self.device if name in keep_on_device else "cpu", device_id)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()  # OrtValues, in bind_output order
        return {name: (v if name in keep_on_device else v.numpy()) for name, v in zip(self.output_names, values)}


def _host(value: Any) -> Any:
    return value if isinstance(value, np.ndarray) else value.numpy()
