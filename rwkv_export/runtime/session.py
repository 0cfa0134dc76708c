"""Drive a prefill runner and a step runner, the state carried between calls.

`ExportedModel(DIR, backend)` opens an exported directory's graphs on one backend (its manifest
says everything: names, shapes, roles, initial values); `TorchReference` (torch_reference.py) is the
same driver over the reference model. Both offer `initial_state(batch)`, `prefill(tokens [B, T],
state)` and `step(tokens [B], state)` returning (logits, new_state), the state as {input_name: array},
and `to_host(state)`: what `generate`, `verify` and `bench` drive.

Backends: ONNX Runtime on a provider (cpu | cuda | tensorrt | auto), or the native TensorRT engines
that `rwkv-export build` recorded in the manifest ("engines"). provider="tensorrt" uses those engines
when the manifest has them, else ORT's TensorRT execution provider; "auto" prefers usable engines.
Under CUDA the state is kept on the device between calls (IO binding): its values are then OrtValues,
which `to_host` copies back; on CPU they are numpy arrays as always.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError, check_token_ids
from rwkv_export.manifest import Manifest, StateSpec
from rwkv_export.runtime.base import Runner, state_to_host
from rwkv_export.runtime.loaders import SessionFromOnnx, SharedWeights, engines_unavailable, resolve_providers
from rwkv_export.runtime.onnxrt import OrtRunner, StepThroughPrefill

StateDict = dict[str, np.ndarray]


class ModelSession:
    """prefill/step over two runners whose state inputs and outputs are `state_specs`."""

    def __init__(
        self,
        name: str,
        dtype: str,
        vocab_size: int,
        state_specs: tuple[StateSpec, ...],
        runners: dict[str, Runner],
        all_logits: bool,
        device_state: bool = False,
    ) -> None:
        missing = [g for g in ("prefill", "step") if g not in runners]
        if missing:
            raise RwkvExportError(f"{name}: no {missing[0]} graph to run")
        self.name, self.dtype, self.vocab_size = name, dtype, vocab_size
        self.state_specs, self.runners, self.all_logits, self.device_state = state_specs, runners, all_logits, device_state

    def __enter__(self) -> ModelSession:
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
        raise NotImplementedError

    def check_tokens(self, tokens: Any) -> np.ndarray:
        if np.size(tokens) == 0:
            raise RwkvExportError("no tokens to run (the prompt is empty)")
        return check_token_ids(tokens, self.vocab_size).astype(np.int64)

    def _run(self, graph: str, tokens: np.ndarray, state: Mapping[str, Any]) -> tuple[np.ndarray, StateDict]:
        runner = self.runners[graph]
        if not isinstance(state, Mapping):
            raise RwkvExportError(f"{runner.name}: the state must be a dict of arrays, got {type(state).__name__}")
        feeds = {"tokens": tokens, **state}
        if self.device_state and isinstance(runner, OrtRunner):
            outputs = runner.infer_bound(feeds, keep_on_device=[spec.output for spec in self.state_specs])
        else:
            outputs = runner.infer(feeds)
        new_state = {spec.name: outputs[spec.output] for spec in self.state_specs}
        return outputs["logits"], new_state

    def to_host(self, state: Mapping[str, Any]) -> StateDict:
        """numpy copies of a state (device OrtValues under CUDA; numpy arrays are returned as they are)."""
        return state_to_host(state)

    def prefill(self, tokens: np.ndarray, state: Mapping[str, Any] | None = None) -> tuple[np.ndarray, StateDict]:
        """tokens [B, T] -> logits [B, V] (or [B, T, V] when all_logits), new state."""
        tokens = self.check_tokens(tokens)
        if tokens.ndim != 2:
            raise RwkvExportError(f"prefill takes tokens shaped [batch, seq], got {list(tokens.shape)}")
        return self._run("prefill", tokens, state if state is not None else self.initial_state(tokens.shape[0]))

    def step(self, tokens: np.ndarray, state: Mapping[str, Any]) -> tuple[np.ndarray, StateDict]:
        """tokens [B] -> logits [B, V], new state."""
        tokens = self.check_tokens(tokens)
        if tokens.ndim != 1:
            raise RwkvExportError(f"step takes tokens shaped [batch], got {list(tokens.shape)}")
        return self._run("step", tokens, state)


class ExportedModel(ModelSession):
    """An exported directory's prefill and step graphs on one backend, driven by its manifest."""

    def __init__(
        self,
        directory: str | Path,
        provider: str = "cpu",
        threads: int = 0,
        runners: dict[str, Runner] | None = None,
        device_state: bool | None = None,
        name: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest.read(self.directory)
        self.model_info = self.manifest.model
        runners = runners or self._open_runners(provider, threads)
        # device_state None: keep the state on the device exactly when the graphs run on one.
        devices = {getattr(r, "device", "cpu") for r in runners.values()}
        device_state = (devices == {"cuda"}) if device_state is None else device_state
        if device_state and not all(isinstance(r, OrtRunner) for r in runners.values()):
            raise RwkvExportError("device-resident state needs ONNX Runtime runners (IO binding)")
        super().__init__(
            name or runners["step"].name,
            self.manifest.dtype,
            self.manifest.model.vocab_size,
            self.manifest.state,
            runners,
            self.manifest.export.all_logits,
            device_state,
        )
        for graph, info in self.manifest.graphs.items():
            if graph in self.runners and sorted(self.runners[graph].input_names) != sorted(info.input_names):
                raise RwkvExportError(
                    f"{graph}: the graph's inputs {self.runners[graph].input_names} do not match the manifest's {info.input_names}"
                )

    def _open_runners(self, provider: str, threads: int) -> dict[str, Runner]:
        m = self.manifest
        for graph in ("prefill", "step"):
            m.graph(graph)
        engines_reason = engines_unavailable(m) if provider in ("tensorrt", "auto") else "not asked for"
        if provider == "tensorrt" and m.engines and engines_reason:
            raise RwkvExportError(f"cannot run the TensorRT engines in '{self.directory}': {engines_reason}")
        if engines_reason is None:
            from rwkv_export.runtime.tensorrt_runner import TensorRTRunner

            return {graph: TensorRTRunner(self.directory, graph, manifest=m) for graph in m.graphs}
        shared = self._shared_weights(provider)
        one_session = m.export.quantization is not None and resolve_providers(provider)[0] == "CPUExecutionProvider"
        try:
            ort_runners = {
                graph: OrtRunner(
                    SessionFromOnnx(m.path(info.file, f"graphs.{graph}.file"), provider, threads, shared),
                    graph=info,
                    vocab_size=m.model.vocab_size,
                )
                for graph, info in m.graphs.items()
                if not (one_session and graph == "step")
            }
            runners: dict[str, Runner] = dict(ort_runners)
            if one_session:  # the prepacked weights once, not per session
                runners["step"] = StepThroughPrefill(ort_runners["prefill"], m.graph("step"), m.model.vocab_size)
            return runners
        except RwkvExportError as exc:
            if provider != "tensorrt":
                raise
            raise RwkvExportError(f"{exc}; or build TensorRT engines: rwkv-export build {self.directory}") from None

    def _shared_weights(self, provider: str) -> SharedWeights | None:
        """The weight file every graph reads (an export's weights.data), for the CPU sessions to share;
        None when the graphs are self-contained or run on a GPU (each session copies to the device), and
        for a quantized export: MatMulNBits runs from the layout prepacking makes (measured on a 0.44B
        RWKV-7 int4 export, ORT 1.32 CPU, 2 threads: step 21 ms prepacked, 697 ms without)."""
        if self.manifest.export.quantization is not None:
            return None
        files = {f for info in self.manifest.graphs.values() for f in info.external_data}
        common = set.intersection(*(set(info.external_data) for info in self.manifest.graphs.values()))
        if provider not in ("cpu", "auto") or len(files) != 1 or not common or resolve_providers(provider)[0] != "CPUExecutionProvider":
            return None
        return SharedWeights(self.manifest.path(files.pop(), "graphs.external_data"))

    def save_state(self, path: str | Path, state: dict[str, Any], rows: list[int] | None = None, note: str = "") -> None:
        """Write `state` (or only `rows` of it) as a state file bound to this export (rwkv_export/serving/state_file.py)."""
        from rwkv_export.serving import state_file

        state_file.save_state(path, state, self.manifest, rows, note)

    def load_state(self, path: str | Path, rows: list[int] | None = None) -> StateDict:
        """A state file of this export (one-line errors for a damaged file or another model, dtype or shape)."""
        from rwkv_export.serving import state_file

        return state_file.load_state(path, self.manifest, rows)

    def initial_state(self, batch: int) -> StateDict:
        """The manifest's initial values: a constant, or an `initial_file` (.npy, batch axis of 1) broadcast."""
        return self.manifest.initial_state(batch)


def initial_state(directory: str | Path, manifest: Manifest | None, batch: int) -> StateDict:
    """An exported model's initial state for `batch` rows (Manifest.initial_state), for callers that
    open one graph without an ExportedModel (bench's profile, paper)."""
    return (manifest or Manifest.read(directory)).initial_state(batch)
