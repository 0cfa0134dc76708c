"""Drive an exported directory by its manifest: prefill, then steps, the state carried between calls.

`ExportedModel(DIR, backend)` opens the prefill and step graphs on one backend; `initial_state(batch)`
builds the state from the manifest's initial values; `prefill(tokens [B, T], state)` and
`step(tokens [B], state)` return (logits, new_state), the state as {input_name: array}.
Nothing here knows RWKV's internals: names, shapes and roles come from manifest.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError
from rwkv_export.export.manifest import read_manifest
from rwkv_export.runtime.base import Runner
from rwkv_export.runtime.onnxrt import OrtRunner

StateDict = dict[str, np.ndarray]


class ExportedModel:
    def __init__(self, directory: str | Path, provider: str = "cpu", threads: int = 0, runners: dict[str, Runner] | None = None) -> None:
        self.directory = Path(directory)
        self.manifest: dict[str, Any] = read_manifest(self.directory)
        self.model_info = self.manifest["model"]
        self.vocab_size = int(self.model_info["vocab_size"])
        self.state_specs = self.manifest["state"]
        self.runners = runners or {
            graph: OrtRunner(self.directory / info["file"], provider, threads) for graph, info in self.manifest["graphs"].items()
        }
        for graph, info in self.manifest["graphs"].items():
            declared = [t["name"] for t in info["inputs"]]
            if sorted(self.runners[graph].input_names) != sorted(declared):
                raise RwkvExportError(f"{graph}: the graph's inputs {self.runners[graph].input_names} do not match the manifest's {declared}")
        self.all_logits = bool(self.manifest["export"].get("all_logits", False))

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
        state = {}
        for spec in self.state_specs:
            shape = [batch if d == "batch" else int(d) for d in spec["shape"]]
            state[spec["name"]] = np.full(shape, spec["initial"], dtype=np.dtype(spec["dtype"]))
        return state

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
        outputs = self.runners[graph].infer({"tokens": tokens, **state})
        new_state = {spec["name"]: outputs[spec["output"]] for spec in self.state_specs}
        return outputs["logits"], new_state

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
