"""ONNX Runtime runner: one InferenceSession (loaders.SessionFromOnnx) per graph, providers chosen by name with fallback.

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
from rwkv_export.manifest import Graph, TensorSpec
from rwkv_export.runtime.base import ORT_TYPES, Runner, state_to_host
from rwkv_export.runtime.loaders import PROVIDER_CHOICES, PROVIDERS, SessionFromOnnx, resolve_providers

__all__ = ["PROVIDERS", "PROVIDER_CHOICES", "OrtRunner", "SessionFromOnnx", "resolve_providers"]


class OrtRunner(Runner):
    """Runs one .onnx file (or a SessionFromOnnx loader). Given the manifest's graph, the session's
    inputs and outputs are checked against it on load (names, dtypes, static dims) and every feed
    against it on each call."""

    name = "onnxruntime"

    def __init__(
        self,
        source: str | Path | SessionFromOnnx,
        provider: str = "cpu",
        threads: int = 0,
        graph: Graph | None = None,
        vocab_size: int | None = None,
    ) -> None:
        loader = source if isinstance(source, SessionFromOnnx) else SessionFromOnnx(source, provider, threads)
        self.path, self.providers = loader.path, loader.providers
        self.session = loader()
        self.shared = loader.shared  # the mapped weights the session reads: alive as long as the session
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if graph is not None:
            _match(self.path, "inputs", inputs, graph.inputs)
            _match(self.path, "outputs", outputs, graph.outputs)
            super().__init__(graph.inputs, graph.outputs, vocab_size)
        else:
            super().__init__([i.name for i in inputs], [o.name for o in outputs], vocab_size)
        self.name = f"onnxruntime[{self.providers[0].replace('ExecutionProvider', '')}]"

    @property
    def device(self) -> str:
        """Where the first provider keeps tensors: "cuda" for the CUDA and TensorRT providers, else "cpu"."""
        return "cuda" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"

    def _infer(self, feeds: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        if any(not isinstance(v, np.ndarray) for v in feeds.values()):  # an OrtValue from infer_bound
            return state_to_host(self.infer_bound(feeds, ()))
        outputs = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outputs))

    def infer_bound(self, feeds: Mapping[str, Any], keep_on_device: Collection[str], device_id: int = 0) -> dict[str, Any]:
        """Run with IO binding: feeds are numpy arrays or OrtValues; outputs named in `keep_on_device`
        come back as OrtValues on `self.device`, the others as numpy arrays."""
        import onnxruntime as ort

        if not self.is_active:
            raise RwkvExportError(f"{self.name}: infer() before activate() (use the runner as a context manager)")
        self.check_feeds(feeds)
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


class StepThroughPrefill(Runner):
    """The step graph run as the prefill graph at T = 1, in the prefill's session (which the step graph
    is, op for op: export/step.py): tokens [B] -> [B, 1]; an all-logits prefill's [B, 1, V] -> [B, V].
    For a quantized export on the CPU, where each session holds its own prepacked copy of the weights
    (MatMulNBits runs from it), one session instead of two halves the memory."""

    def __init__(self, prefill: OrtRunner, step: Graph, vocab_size: int | None = None) -> None:
        super().__init__(step.inputs, step.outputs, vocab_size)
        self.prefill, self.name, self.device = prefill, prefill.name, prefill.device

    def _infer(self, feeds: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        outputs = self.prefill.infer({**feeds, "tokens": np.asarray(feeds["tokens"])[:, None]})
        logits = outputs["logits"]
        return {**outputs, "logits": logits[:, -1] if logits.ndim == 3 else logits}


def _match(path: Path, kind: str, got: Any, specs: tuple[TensorSpec, ...]) -> None:
    """The session's inputs/outputs are the manifest's: same names, dtypes and static dims."""
    session = {t.name: t for t in got}
    names = [t.name for t in specs]
    if sorted(session) != sorted(names):
        raise RwkvExportError(f"{path.name}: the graph's {kind} {sorted(session)} do not match the manifest's {sorted(names)}")
    for spec in specs:
        actual = session[spec.name]
        dtype = ORT_TYPES.get(actual.type, actual.type)
        dims = [d if isinstance(d, int) else None for d in actual.shape]
        want = [d if isinstance(d, int) else None for d in spec.shape]
        if dtype != spec.dtype or len(dims) != len(want) or any(a is not None and w is not None and a != w for a, w in zip(dims, want)):
            raise RwkvExportError(
                f"{path.name}: {kind[:-1]} '{spec.name}' is {dtype} {list(actual.shape)} in the graph but "
                f"{spec.dtype} {list(spec.shape)} in the manifest"
            )
