"""Stage 4, runtime: run exported graphs (ONNX Runtime, TensorRT) and the torch reference behind one contract.

    loaders.py          SessionFromOnnx, EngineFromPlan: make what a runner runs (Polygraphy's loaders)
    base.py             Runner: infer(feeds) -> outputs, every feed checked against the tensor specs
    onnxrt.py           OrtRunner            tensorrt_runner.py   TensorRTRunner (+ DeviceState)
    torch_reference.py  TorchRunner, TorchReference (the reference model as prefill/step runners)
    session.py          ModelSession: prefill/step over two runners, the state carried between calls;
                        ExportedModel: the one an exported directory's manifest describes

Everything reads the export through `rwkv_export.manifest.Manifest`; nothing here imports the exporter.
"""

from rwkv_export.runtime.base import Runner
from rwkv_export.runtime.loaders import EngineFromPlan, SessionFromOnnx, engines_unavailable
from rwkv_export.runtime.onnxrt import PROVIDER_CHOICES, OrtRunner, resolve_providers
from rwkv_export.runtime.session import ExportedModel, ModelSession, StateDict, initial_state

__all__ = [
    "PROVIDER_CHOICES",
    "EngineFromPlan",
    "ExportedModel",
    "ModelSession",
    "OrtRunner",
    "Runner",
    "SessionFromOnnx",
    "StateDict",
    "engines_unavailable",
    "initial_state",
    "resolve_providers",
]
