"""The torch reference model as a backend: two Runners (prefill, step) under the same driver as an export.

    with TorchReference(checkpoint, "float64") as oracle:     # the float64 oracle `verify` judges by
        logits, state = oracle.prefill(tokens)                 # [B, T, V] (all_logits=True), numpy state

Its tensor specs are made from the model the way the exporter's are (tokens, logits, each state
tensor with a symbolic batch dim), so the runner contract checks its feeds exactly as it checks an
export's. `verify` (every dtype, all logits) and `bench` (float32, last logits) both use this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rwkv_export.manifest import StateSpec, TensorSpec
from rwkv_export.runtime.base import Runner
from rwkv_export.runtime.session import ModelSession, StateDict


class TorchRunner(Runner):
    """One form of the reference model (sequence for prefill, step for step) behind infer(feeds)."""

    def __init__(
        self,
        model: Any,
        graph: str,
        state_type: Any,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        vocab_size: int,
        all_logits: bool,
        name: str,
    ) -> None:
        super().__init__(inputs, outputs, vocab_size)
        self.model, self.graph, self.state_type, self.all_logits, self.name = model, graph, state_type, all_logits, name

    def _infer(self, feeds: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        import torch

        fields = self.state_type._fields
        tokens = torch.from_numpy(np.ascontiguousarray(feeds["tokens"]))
        state = self.state_type(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in fields))
        with torch.inference_mode():
            if self.graph == "prefill":
                logits, new = self.model.forward_sequence(tokens, state, all_logits=self.all_logits)
            else:
                logits, new = self.model.forward_step(tokens, state)
        return {"logits": logits.numpy(), **{f"{n}_out": v.numpy() for n, v in zip(fields, new)}}


class TorchReference(ModelSession):
    """The reference model of `checkpoint` in one dtype (float64 is the oracle)."""

    def __init__(self, checkpoint: Any, dtype: str, all_logits: bool = True, name: str | None = None) -> None:
        from rwkv_export.model import build_model

        self.model = build_model(checkpoint, dtype)
        cfg = checkpoint.config
        self.config = cfg
        self.n_layer, self.n_embd = cfg.n_layer, cfg.n_embd
        initial = self._initial(1)
        self.state_type = type(initial)
        states = tuple(StateSpec(n, str(t.numpy().dtype), _batch_dim(t.shape), 0.0, f"{n}_out") for n, t in initial._asdict().items())
        name = name or f"torch-{dtype}"
        runners: dict[str, Runner] = {}
        for graph, tokens_shape in (("prefill", ("batch", "seq")), ("step", ("batch",))):
            logits_shape = ("batch", "seq", cfg.vocab_size) if graph == "prefill" and all_logits else ("batch", cfg.vocab_size)
            inputs = (
                TensorSpec("tokens", "int64", tokens_shape, "tokens"),
                *(TensorSpec(s.name, s.dtype, s.shape, "state") for s in states),
            )
            outputs = (
                TensorSpec("logits", "float32", logits_shape, "logits"),
                *(TensorSpec(s.output, s.dtype, s.shape, "state", feeds=s.name) for s in states),
            )
            runners[graph] = TorchRunner(self.model, graph, self.state_type, inputs, outputs, cfg.vocab_size, all_logits, name)
        super().__init__(name, dtype, cfg.vocab_size, states, runners, all_logits)
        for runner in runners.values():  # the model is built: nothing to load, nothing to release
            runner.activate()

    def __exit__(self, *exc: object) -> None:
        pass  # usable after a `with` block too (callers keep one reference model for a whole session)

    def _initial(self, batch: int) -> Any:
        """The model's own state NamedTuple (ChannelState for RWKV-4, HeadState for 5/6/7; v6 may start from its time_state)."""
        return self.model.initial_state(batch)

    def initial_state(self, batch: int) -> StateDict:
        return {name: t.numpy() for name, t in self._initial(batch)._asdict().items()}


def _batch_dim(shape: Any) -> tuple[int | str, ...]:
    """[n_layer, 1, ...] of a batch-1 state -> [n_layer, "batch", ...]."""
    dims = list(shape)
    return tuple("batch" if i == 1 else int(d) for i, d in enumerate(dims))
