"""A replay of Triton's sequence batcher over ONNX Runtime, for testing a generated repository.

This is *not* a server: no tritonserver binary can be installed here (README, Serving). It reads a
model's config.pbtxt with Triton's own ModelConfig protobuf and applies the documented semantics of
`sequence_batching` with implicit state to the model file:

- the state is kept per correlation id, one sequence's tensors with the config's `dims`;
- a request flagged START gets the `initial_state` (zero_data, or the data file under
  MODEL/initial_state/, row-major); a non-START request of an unknown sequence is an error;
- one execution fills batch slots with requests of *different* sequences (at most max_batch_size),
  concatenated on axis 0, with the START/READY/END control tensors set per slot (int32_false_true);
- each output state becomes that sequence's next input state; END drops the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NUMPY = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32}


def parse_config(model_dir: Path) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def type_name(config_type: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(config_type)


@dataclass
class Request:
    correlation_id: int
    tokens: np.ndarray  # one sequence's tokens in the config's dims (e.g. [T] for prefill, [1] for step)
    start: bool = False
    end: bool = False


class SequenceBatcherReplay:
    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        self.dir = model_dir
        self.config = parse_config(model_dir)
        self.session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        self.batching = self.config.max_batch_size > 0
        self.sequences: dict[int, dict[str, np.ndarray]] = {}
        self.initial = {s.input_name: self._initial(s) for s in self.config.sequence_batching.state}
        self.executions = 0

    def _initial(self, state: Any) -> np.ndarray:
        init = state.initial_state[0]
        dtype = NUMPY[type_name(init.data_type)]
        dims = list(init.dims)
        if init.WhichOneof("state_data") == "zero_data":
            return np.zeros(dims, dtype)
        return np.fromfile(self.dir / "initial_state" / init.data_file, dtype=np.dtype(dtype).newbyteorder("<")).reshape(dims)

    def _token_feed(self, requests: list[Request]) -> np.ndarray:
        spec = self.config.input[0]
        if self.batching:  # each request [1, *dims] concatenated; a reshape applies to the model's view
            batch = np.stack([np.asarray(r.tokens, np.int64).reshape(list(spec.dims)) for r in requests])
            return batch.reshape([len(requests), *spec.reshape.shape]) if spec.HasField("reshape") else batch
        return np.asarray(requests[0].tokens, np.int64).reshape(list(spec.dims))

    def execute(self, requests: list[Request]) -> list[dict[str, np.ndarray]]:
        """One model execution over `requests` (one per slot); returns each slot's outputs."""
        ids = [r.correlation_id for r in requests]
        assert len(set(ids)) == len(ids), "a batch holds at most one request of a sequence"
        assert len(requests) <= max(1, self.config.max_batch_size), "more requests than batch slots"
        for r in requests:
            if r.start:
                self.sequences[r.correlation_id] = {k: v.copy() for k, v in self.initial.items()}
            elif r.correlation_id not in self.sequences:
                raise KeyError(f"sequence {r.correlation_id} was not started (Triton rejects it)")
        feeds: dict[str, np.ndarray] = {self.config.input[0].name: self._token_feed(requests)}
        for state in self.config.sequence_batching.state:
            values = [self.sequences[i][state.input_name] for i in ids]
            feeds[state.input_name] = np.stack(values) if self.batching else values[0]
        for control in self.config.sequence_batching.control_input:
            kind = control.control[0]
            false_true = list(kind.int32_false_true)
            flags = [self._flag(type_name_kind(kind.kind), r) for r in requests]
            value = np.array([[false_true[int(f)]] for f in flags], np.int32)
            feeds[control.name] = value if self.batching else value[0]
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, feeds)))
        self.executions += 1
        results = []
        for slot, r in enumerate(requests):
            for state in self.config.sequence_batching.state:
                out = outputs[state.output_name]
                self.sequences[r.correlation_id][state.input_name] = out[slot].copy() if self.batching else out.copy()
            results.append({o.name: (outputs[o.name][slot] if self.batching else outputs[o.name][0]) for o in self.config.output})
            if r.end:
                del self.sequences[r.correlation_id]
        return results

    @staticmethod
    def _flag(kind: str, request: Request) -> bool:
        return {"CONTROL_SEQUENCE_START": request.start, "CONTROL_SEQUENCE_END": request.end, "CONTROL_SEQUENCE_READY": True}[kind]


def type_name_kind(kind: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelSequenceBatching.Control.Kind.Name(kind)
