"""Every way to run the same weights, behind one small interface the benchmark times.

    backend = make_backend("ort-fp32", workspace, threads=2)   # or raises BackendUnavailable(reason)
    backend.prefill(tokens)        # tokens [B, T] int64, from the initial state; returns logits [B, V]
    backend.reset(batch)           # initial state for steps
    backend.step(tokens)           # tokens [B]; carries the state; returns logits [B, V]

Backends: the torch reference (sequence form for prefill, step form for steps), ONNX Runtime on the
float32 and float16 exports and on the int8 / int4 weight-quantized ones (`export --quantize`), TensorRT engines where a GPU and
TensorRT are present (these three are the runtime's own sessions and runners, runtime/), and the peers a user would pick instead: the `rwkv` package (`cpu fp32`) and
transformers' RwkvForCausalLM. All read the files of one `Workspace`, i.e. the same weights.

Every RWKV version runs on the torch reference, ORT and the `rwkv` package (which picks RWKV-7 or
RWKV-4/5/6 once per process, see `rwkv_package_class`); transformers has RWKV-4 only.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rwkv_export.bench.workspace import Workspace
from rwkv_export.versions import version_info

# The rwkv package reads these at import time. Its TorchScript path is what ChatRWKV enables and
# is its faster CPU path; no CUDA build on a CPU benchmark.
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")

REFERENCE = "torch"
ALL_BACKENDS = ("torch", "ort-fp32", "ort-fp16", "ort-int8", "ort-int4", "tensorrt", "rwkv", "transformers")
# backend -> the workspace export it runs (int8/int4: `export --quantize` with its measured defaults)
ONNX_DTYPES = {"ort-fp32": "float32", "ort-fp16": "float16", "ort-int8": "int8", "ort-int4": "int4"}


class BackendUnavailable(Exception):
    """This backend cannot run here; the message is the reason the report shows."""


class Backend:
    """One model loaded on one runtime. `max_batch` None: any batch."""

    name = "backend"
    max_batch: int | None = None

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset(self, batch: int) -> None:
        raise NotImplementedError

    def step(self, tokens: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SessionBackend(Backend):
    """A runtime ModelSession (runtime/session.py) held with its state: the torch reference, or an
    export on ONNX Runtime or on its TensorRT engines. The same runners `run` and `verify` drive."""

    def __init__(self, session: Any) -> None:
        self.session = session.__enter__()

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        logits, _ = self.session.prefill(tokens)
        return logits

    def reset(self, batch: int) -> None:
        self.state = self.session.initial_state(batch)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        logits, self.state = self.session.step(tokens, self.state)
        return logits

    def close(self) -> None:
        self.session.__exit__(None, None, None)


def torch_reference(ws: Workspace, threads: int) -> Backend:
    """The stage-2 reference of the checkpoint's version, float32, prefill returning the last logits."""
    from rwkv_export.runtime.torch_reference import TorchReference

    return SessionBackend(TorchReference(ws.checkpoint(), "float32", all_logits=False))


def exported(ws: Workspace, threads: int, dtype: str, provider: str = "cpu") -> Backend:
    from rwkv_export.errors import RwkvExportError
    from rwkv_export.runtime import ExportedModel

    try:
        return SessionBackend(ExportedModel(ws.onnx_dir(dtype), provider, threads))
    except RwkvExportError as exc:
        raise BackendUnavailable(str(exc)) from None


def rwkv_package_class(version: str) -> Any:
    """The `rwkv` package's model class for an RWKV-`version` checkpoint, importing the package if needed.

    The package picks its model family once, at import: with RWKV_V7_ON=1 its `RWKV` is the RWKV-7
    class (RWKV_x070) and RWKV-4/5/6 are gone; without it, RWKV-4/5/6 only. Not imported yet: import
    it for this version's family (RWKV_V7_ON set for the import only, the user's environment is
    restored). Already imported for the other family: unavailable, with the reason; one process
    cannot hold both, and re-importing under another name would not be the package a user runs.
    """
    want_v7 = version_info(version).rwkv_package_v7
    module = sys.modules.get("rwkv.model")
    if module is None:
        saved = os.environ.get("RWKV_V7_ON")
        os.environ["RWKV_V7_ON"] = "1" if want_v7 else "0"
        # it scripts its modules with torch.jit, which warns of deprecation on every class; v7 prints a banner
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module("rwkv.model")
        except ImportError as exc:
            raise BackendUnavailable(f"the `rwkv` package is not installed ({exc}); pip install 'rwkv-export[bench]'") from None
        finally:
            if saved is None:
                os.environ.pop("RWKV_V7_ON", None)
            else:
                os.environ["RWKV_V7_ON"] = saved
    has_v7 = hasattr(module, "RWKV_x070")
    if has_v7 != want_v7:
        family = "RWKV-7 only (RWKV_V7_ON=1)" if has_v7 else "RWKV-4/5/6 only (RWKV_V7_ON unset)"
        raise BackendUnavailable(
            f"the `rwkv` package was already imported in this process for {family}; it picks its model "
            f"family once per process, at import, so RWKV-{version} needs a fresh process"
        )
    return module.RWKV


class RwkvPackage(Backend):
    """The `rwkv` PyPI package (ChatRWKV's model), strategy 'cpu fp32'; one sequence per call.

    It normalises ln_x with eps 64e-5 for every version; an RWKV-5.1 .pth declares 1e-5, so on 5.1
    the parity line shows that difference, not a loading fault.
    """

    max_batch = 1

    def __init__(self, ws: Workspace, threads: int) -> None:
        rwkv_class = rwkv_package_class(ws.version())
        # it prints a line per tensor while loading (and warns of TorchScript deprecation)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = rwkv_class(model=str(ws.pth.with_suffix("")), strategy="cpu fp32")

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        logits, _ = self.model.forward(tokens[0].tolist(), None)
        return logits.numpy()[None]

    def reset(self, batch: int) -> None:
        self.state = None

    def step(self, tokens: np.ndarray) -> np.ndarray:
        logits, self.state = self.model.forward([int(tokens[0])], self.state)
        return logits.numpy()[None]


class Transformers(Backend):
    """transformers' RwkvForCausalLM on the same weights (HF directory), float32, eager."""

    def __init__(self, ws: Workspace, threads: int) -> None:
        version = ws.version()
        if version_info(version).transformers_class != "RwkvForCausalLM":
            raise BackendUnavailable(f"transformers has RwkvForCausalLM for RWKV-4 only; this is RWKV-{version}")
        try:
            from transformers import RwkvForCausalLM
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise BackendUnavailable(f"transformers is not installed ({exc}); pip install 'rwkv-export[bench]'") from None
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # its loading bar would break ours on stderr
        self.model = RwkvForCausalLM.from_pretrained(str(ws.hf_dir), dtype=torch.float32).eval()

    def prefill(self, tokens: np.ndarray) -> np.ndarray:
        # logits_to_keep=1: the head on the last position only, as our prefill graph does
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(tokens), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].numpy()

    def reset(self, batch: int) -> None:
        self.state = None

    def step(self, tokens: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(tokens)[:, None], state=self.state, use_cache=True)
        self.state = out.state
        return out.logits[:, -1].numpy()


def tensorrt(ws: Workspace, threads: int) -> Backend:
    """Engines from `rwkv-export build` on the float32 export; host state in and out."""
    from rwkv_export.errors import RwkvExportError
    from rwkv_export.manifest import Manifest
    from rwkv_export.runtime.loaders import engines_unavailable

    directory = ws.onnx_dir("float32")
    if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidia0"):
        raise BackendUnavailable("no NVIDIA GPU on this machine")
    try:
        reason = engines_unavailable(Manifest.read(directory))
    except RwkvExportError as exc:
        raise BackendUnavailable(str(exc)) from None
    if reason:
        raise BackendUnavailable(reason)
    return exported(ws, threads, "float32", "tensorrt")


FACTORIES: dict[str, Callable[[Workspace, int], Backend]] = {
    "torch": torch_reference,
    "ort-fp32": lambda ws, threads: exported(ws, threads, "float32"),
    "ort-fp16": lambda ws, threads: exported(ws, threads, "float16"),
    "ort-int8": lambda ws, threads: exported(ws, threads, "int8"),
    "ort-int4": lambda ws, threads: exported(ws, threads, "int4"),
    "tensorrt": tensorrt,
    "rwkv": RwkvPackage,
    "transformers": Transformers,
}


def make_backend(name: str, ws: Workspace, threads: int) -> Backend:
    """Load `name` on the workspace's weights; BackendUnavailable(reason) where it cannot run."""
    torch.set_num_threads(threads)  # every torch-based backend runs on the same thread count as ORT
    backend = FACTORIES[name](ws, threads)
    backend.name = name
    return backend


def needs(names: list[str]) -> dict[str, Any]:
    """Which workspace files the chosen backends read (the HF directory only exists for RWKV-4)."""
    dtypes = sorted({ONNX_DTYPES[n] for n in names if n in ONNX_DTYPES} | ({"float32"} if "tensorrt" in names else set()))
    return {"hf": "transformers" in names, "dtypes": dtypes}
