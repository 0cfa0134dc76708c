"""Stage 4, runtime: run exported graphs on a backend (ONNX Runtime here; TensorRT where present).

Every backend implements `Runner.infer(feeds) -> outputs`; `ExportedModel` drives prefill and step
from the manifest, carrying the state between calls.
"""

from rwkv_export.runtime.base import Runner
from rwkv_export.runtime.onnxrt import PROVIDER_CHOICES, OrtRunner, resolve_providers
from rwkv_export.runtime.session import ExportedModel, StateDict, initial_state

__all__ = ["ExportedModel", "OrtRunner", "PROVIDER_CHOICES", "Runner", "StateDict", "initial_state", "resolve_providers"]
