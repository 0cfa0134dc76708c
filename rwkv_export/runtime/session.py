"""Drive an exported directory by its manifest: prefill, then steps, the state carried between calls.

`ExportedModel(DIR, backend)` opens the prefill and step graphs on one backend; `initial_state(batch)`
builds the state from the manifest's initial values; `prefill(tokens [B, T], state)` and
`step(tokens [B], state)` return (logits, new_state), the state as {input_name: array}.
Nothing here knows RWKV's internals: names, shapes and roles come from manifest.json.

Backends: ONNX Runtime on a provider (cpu | cuda | tensorrt | auto), or the native TensorRT engines
that `rwkv-export build` recorded in the manifest ("engines"). provider="tensorrt" uses those engines
when the manifest has them, else ORT's TensorRT execution provider; "auto" prefers usable engines.
Under CUDA the state is kept on the device between calls (IO binding): its values are then OrtValues,
which `state_to_host` copies back; on CPU they are numpy arrays as always.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError
from rwkv_export.export.manifest import read_manifest
from rwkv_export.runtime.base import Runner
from rwkv_export.runtime.onnxrt import OrtRunner

StateDict = dict[str, np.ndarray]


class ExportedModel:
    def __init__(self, directory: str | Path, provider: str = "cpu", threads: int = 0, runners: dict[str, Runner] | None = None,
                 device_state: bool | None = None) -> None:
        self.directory = Path(directory)
        self.manifest: dict[str, Any] = read_manifest(self.directory)
        self.model_info = self.manifest["model"]
        self.vocab_size = int(self.model_info["vocab_size"])
        self.state_specs = self.manifest["state"]
        self.runners = runners or self._open_runners(provider, threads)
        # device_state None: keep the state on the device exactly when the graphs run on one.
        devices = {getattr(r, "device", "cpu") for r in self.runners.values()}
        self.device_state = (devices == {"cuda"}) if device_state is None else device_state
        if self.device_state and not all(isinstance(r, OrtRunner) for r in self.runners.values()):
            raise RwkvExportError("device-resident state needs ONNX Runtime runners (IO binding)")
        for graph, info in self.manifest["graphs"].items():
            declared = [t["name"] for t in info["inputs"]]
            if sorted(self.runners[graph].input_names) != sorted(declared):
                raise RwkvExportError(f"{graph}: the graph's inputs {self.runners[graph].input_names} do not match the manifest's {declared}")
        self.all_logits = bool(self.manifest["export"].get("all_logits", False))

    def _open_runners(self, provider: str, threads: int) -> dict[str, Runner]:
        graphs = self.manifest["graphs"]
        engines_reason = tensorrt_unavailable(self.directory, self.manifest) if provider in ("tensorrt", "auto") else "not asked for"
        if provider == "tensorrt" and self.manifest.get("engines") and engines_reason:
            raise RwkvExportError(f"cannot run the TensorRT engines in '{self.directory}': {engines_reason}")
        if engines_reason is None:
            return {graph: TensorRTEngineRunner(self.directory, graph, info) for graph, info in graphs.items()}
        try:
            return {graph: OrtRunner(self.directory / info["file"], provider, threads) for graph, info in graphs.items()}
        except RwkvExportError as exc:
            if provider != "tensorrt":
                raise
            raise RwkvExportError(f"{exc}; or build TensorRT engines: rwkv-export build {self.directory}") from None

    def __enter__(self) -> ExportedModel:
        for runner in self.runners.values():
            runner.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        for runner in self.runners.values():
            runner.deactivate()

    @property
    def backend_name(self) -> str:
        return self.runners["step"].name

    def initial_state(self, batch: int) -> StateDict:
        """The manifest's initial values: a constant, or an `initial_file` (.npy, batch axis of 1) broadcast."""
        return initial_state(self.directory, self.manifest, batch)

    def check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.size == 0:
            raise RwkvExportError("no tokens to run (the prompt is empty)")
        if not np.issubdtype(tokens.dtype, np.integer):
            raise RwkvExportError(f"token ids must be integers, got dtype {tokens.dtype}")
        bad = (tokens < 0) | (tokens >= self.vocab_size)
        if bad.any():
            raise RwkvExportError(f"token id {int(tokens[bad].flat[0])} is out of range for this model (vocab {self.vocab_size}: ids 0..{self.vocab_size - 1})")
        return tokens.astype(np.int64)

    def _run(self, graph: str, tokens: np.ndarray, state: StateDict) -> tuple[np.ndarray, StateDict]:
        runner = self.runners[graph]
        feeds = {"tokens": tokens, **state}
        if self.device_state and isinstance(runner, OrtRunner):
            if not runner.is_active:
                raise RwkvExportError(f"{runner.name}: run before activate() (use the ExportedModel as a context manager)")
            outputs = runner.infer_bound(feeds, keep_on_device=[spec["output"] for spec in self.state_specs])
        else:
            outputs = runner.infer(feeds)
        new_state = {spec["name"]: outputs[spec["output"]] for spec in self.state_specs}
        return outputs["logits"], new_state

    @staticmethod
    def state_to_host(state: dict[str, Any]) -> StateDict:
        """numpy copies of a state (device OrtValues under CUDA; numpy arrays are returned as they are)."""
        return {name: v if isinstance(v, np.ndarray) else v.numpy() for name, v in state.items()}

    def prefill(self, tokens: np.ndarray, state: StateDict | None = None) -> tuple[np.ndarray, StateDict]:
        """tokens [B, T] -> logits [B, V] (or [B, T, V] for an --all-logits export), new state."""
        tokens = self.check_tokens(tokens)
        if tokens.ndim != 2:
            raise RwkvExportError(f"prefill takes tokens shaped [batch, seq], got {list(tokens.shape)}")
        return self._run("prefill", tokens, state if state is not None else self.initial_state(tokens.shape[0]))

    def step(self, tokens: np.ndarray, state: StateDict) -> tuple[np.ndarray, StateDict]:
        """tokens [B] -> logits [B, V], new state."""
        tokens = self.check_tokens(tokens)
        if tokens.ndim != 1:
            raise RwkvExportError(f"step takes tokens shaped [batch], got {list(tokens.shape)}")
        return self._run("step", tokens, state)

    def save_state(self, path: str | Path, state: dict[str, Any], rows: list[int] | None = None, note: str = "") -> None:
        """Write `state` (or only `rows` of it) as a state file bound to this export (rwkv_export/serving/state_file.py)."""
        from rwkv_export.serving import state_file

        state_file.save_state(path, state, self.manifest, rows, note)

    def load_state(self, path: str | Path, rows: list[int] | None = None) -> StateDict:
        """A state file of this export (one-line errors for a damaged file or another model, dtype or shape)."""
        from rwkv_export.serving import state_file

        return state_file.load_state(path, self.manifest, rows)


# --- native TensorRT engines (rwkv_export/runtime/tensorrt_runner.py) -----------------------------


def tensorrt_unavailable(directory: str | Path, manifest: dict[str, Any]) -> str | None:
    """Why the manifest's TensorRT engines cannot run here (None when they can)."""
    engines = manifest.get("engines") or {}
    missing = [g for g in manifest["graphs"] if g not in engines or not (Path(directory) / engines[g]["file"]).is_file()]
    if missing:
        return f"no TensorRT engine for {', '.join(missing)} in '{directory}' (run: rwkv-export build {directory})"
    from rwkv_export.kernels import trt_compat

    target = engines[next(iter(engines))].get("target")
    try:
        trt_compat.load(target)
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


class TensorRTEngineRunner(Runner):
    """The Runner contract over TensorRTRunner (host feeds, host outputs, state passed explicitly)."""

    def __init__(self, directory: Path, graph: str, info: dict[str, Any]) -> None:
        from rwkv_export.runtime.tensorrt_runner import TensorRTRunner

        super().__init__([t["name"] for t in info["inputs"]], [t["name"] for t in info["outputs"]])
        self._runner = TensorRTRunner(directory, graph)
        self.name = f"tensorrt[{graph}]"

    def _activate(self) -> None:
        self._runner.activate()

    def _deactivate(self) -> None:
        self._runner.deactivate()

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runner.infer(dict(feeds))


def initial_state(directory: str | Path, manifest: Mapping[str, Any], batch: int) -> StateDict:
    """An exported model's initial state for `batch` rows, from its manifest alone: each state
    input's constant, or its `initial_file` (.npy with a batch axis of 1, e.g. a v6 time_state)
    broadcast. For callers that open one graph without an ExportedModel (bench's profile, paper)."""
    state = {}
    for spec in manifest["state"]:
        shape = [batch if d == "batch" else int(d) for d in spec["shape"]]
        dtype = np.dtype(spec["dtype"])
        if spec.get("initial_file"):
            value = np.load(Path(directory) / spec["initial_file"])
            state[spec["name"]] = np.ascontiguousarray(np.broadcast_to(value.astype(dtype), shape))
        else:
            state[spec["name"]] = np.full(shape, spec["initial"], dtype=dtype)
    return state
