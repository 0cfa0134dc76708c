"""`rwkv-export triton DIR -o REPO`: a Triton Inference Server model repository for an export.

    REPO/<name>_prefill/config.pbtxt        sequence model on the prefill graph: a request carries
        1/model.onnx | 1/model.plan          tokens [T] (the prompt on START, later 1 token each)
        initial_state/<state>.bin            non-zero initial values (pp = -1e38, a v6 time_state)
    REPO/<name>_step/...                    sequence model on the step graph: one token per request
    REPO/README.md                           the request flow

Both models use Triton's sequence batcher with implicit state: one `state` entry per state tensor
of the manifest (input = its name, output = its `_out` twin), each with an `initial_state` (zero_data,
or a raw row-major data file). Triton keeps the state per sequence (correlation id) inside the
model, so a sequence lives on one of the two models from START to END.

Backends: "onnxruntime" serves the exported graphs with the state's batch axis moved first and the
START/READY/END control inputs declared (onnx_wrap.py); "tensorrt" serves the engines `build`
recorded, which keep the batch on axis 1, so only without Triton batching (max_batch_size 0), and
only engines that need no Python at run time (AOT plugin front, or the WKV function inlined).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError
from rwkv_export.fileio import atomic_directory
from rwkv_export.manifest import Manifest, StateSpec, TensorSpec
from rwkv_export.manifest.files import checked_sha256
from rwkv_export.serving import onnx_wrap
from rwkv_export.serving.state_file import describe, model_summary

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
BACKENDS = ("onnxruntime", "tensorrt")
GRAPHS = ("prefill", "step")
CONTROL_KINDS = {"START": "CONTROL_SEQUENCE_START", "READY": "CONTROL_SEQUENCE_READY", "END": "CONTROL_SEQUENCE_END"}


@dataclass(frozen=True)
class RepoOptions:
    backend: str = "onnxruntime"
    max_batch_size: int = 8  # 0: no Triton batching (each request is one sequence)
    name: str = "rwkv"
    idle_seconds: float = 600.0  # max_sequence_idle_microseconds: a conversation waits this long for its next request

    def model_name(self, graph: str) -> str:
        return f"{self.name}_{graph}"


def unsupported(manifest: Manifest, options: RepoOptions) -> str | None:
    """Why this export cannot be served with these options (None when it can)."""
    if options.backend not in BACKENDS:
        return f"unknown Triton backend {options.backend!r} (expected one of {', '.join(BACKENDS)})"
    tensors: list[StateSpec | TensorSpec] = [*manifest.state]
    tensors += [t for g in GRAPHS for t in (*manifest.graph(g).inputs, *manifest.graph(g).outputs)]
    for spec in tensors:
        if spec.dtype not in TRITON_TYPES:
            return f"tensor '{spec.name}' has dtype {spec.dtype}, which Triton's model configuration has no type for"
    if options.backend == "onnxruntime":
        return None
    entries = {g: (manifest.engines or {}).get(g) for g in GRAPHS}
    missing = [g for g, e in entries.items() if e is None]
    if missing:
        return f"the export has no TensorRT engine for {', '.join(missing)}; run `rwkv-export build` first or use --backend onnxruntime"
    python = [g for g, e in entries.items() if e is not None and e.plugin == "python"]
    if python:
        return (
            f"the {', '.join(python)} engine(s) use the Python plugin front, which needs our Python plugin registered in the "
            "serving process; Triton's TensorRT backend loads plans without Python: rebuild with --plugin aot or --plugin none"
        )
    if options.max_batch_size > 0:
        return (
            "Triton batches implicit state on axis 0, but TensorRT engines keep the state's batch on axis 1 "
            "([n_layer, batch, ...]) and a plan cannot be re-wrapped: use --max-batch-size 0 or --backend onnxruntime"
        )
    return None


def _dims(shape: list[Any], batching: bool, batch_axis: int = 0) -> list[int]:
    """Manifest shape -> Triton dims: the batch axis dropped (batching) or 1; symbolic dims -1."""
    dims = []
    for axis, d in enumerate(shape):
        if d == "batch":
            if axis != batch_axis:
                raise RwkvExportError(f"shape {shape}: the batch dim is on axis {axis}, Triton needs it on axis {batch_axis}")
            if not batching:
                dims.append(1)
            continue
        dims.append(-1 if isinstance(d, str) else int(d))
    return dims


def _list(values: list[Any]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def _tensor(t: TensorSpec, batching: bool) -> str:
    dims = _dims(list(t.shape), batching)
    reshape = ""
    if not dims:  # a [batch] tensor: Triton needs dims [1], reshaped away for the model
        dims, reshape = [1], " reshape: { shape: [ ] }"
    return f'  {{ name: "{t.name}" data_type: {TRITON_TYPES[t.dtype]} dims: {_list(dims)}{reshape} }}'


def state_dims(spec: StateSpec, options: RepoOptions) -> list[int]:
    """A state tensor's dims in the served model: batch-first wrapper (onnxruntime) or engine layout."""
    if options.backend == "onnxruntime":
        return _dims(onnx_wrap.swap01(list(spec.shape)), options.max_batch_size > 0)
    return list(spec.concrete_shape(1))


def initial_data(spec: StateSpec, value: np.ndarray, options: RepoOptions) -> np.ndarray | None:
    """The raw initial `value` of one state (one sequence, in state_dims layout); None for all zeros."""
    if not value.any():
        return None
    return np.ascontiguousarray(value.reshape(state_dims(spec, options)), value.dtype.newbyteorder("<"))


def _state_entry(spec: StateSpec, options: RepoOptions, has_data: bool) -> str:
    kind = TRITON_TYPES[spec.dtype]
    dims = _list(state_dims(spec, options))
    source = f'data_file: "{spec.name}.bin"' if has_data else "zero_data: true"
    return (
        f'    {{ input_name: "{spec.name}" output_name: "{spec.output}" data_type: {kind} dims: {dims}\n'
        f'      initial_state: {{ data_type: {kind} dims: {dims} {source} name: "{spec.name} initial" }} }}'
    )


def config_text(manifest: Manifest, graph: str, options: RepoOptions, data_files: set[str]) -> str:
    """config.pbtxt of one graph's sequence model (protobuf text format of Triton's ModelConfig)."""
    batching = options.max_batch_size > 0
    info = manifest.graph(graph)
    io_in = [_tensor(t, batching) for t in info.inputs if t.role != "state"]
    io_out = [_tensor(t, batching) for t in info.outputs if t.role != "state"]
    lines = [
        f'name: "{options.model_name(graph)}"',
        f'backend: "{options.backend}"',
        f"max_batch_size: {options.max_batch_size}",
        "input [",
        ",\n".join(io_in),
        "]",
        "output [",
        ",\n".join(io_out),
        "]",
        "sequence_batching {",
        f"  max_sequence_idle_microseconds: {int(options.idle_seconds * 1e6)}",
        "  direct { }",
    ]
    if options.backend == "onnxruntime":
        controls = [
            f'    {{ name: "{name}" control [ {{ kind: {kind} int32_false_true: [ 0, 1 ] }} ] }}' for name, kind in CONTROL_KINDS.items()
        ]
        lines += ["  control_input [", ",\n".join(controls), "  ]"]
    states = [_state_entry(spec, options, spec.name in data_files) for spec in manifest.state]
    lines += ["  state [", ",\n".join(states), "  ]", "}"]
    return "\n".join(lines) + "\n"


def _write_model(manifest: Manifest, graph: str, options: RepoOptions, target: Path) -> None:
    version = target / "1"
    version.mkdir(parents=True)
    if options.backend == "onnxruntime":
        control_shape_batching = options.max_batch_size > 0
        model = onnx_wrap.batch_first_model(manifest, graph, controls=True, batched_controls=control_shape_batching)
        onnx_wrap.save_model(model, version / "model.onnx", onnx_wrap.has_external_data(manifest, graph))
        return
    entry = (manifest.engines or {})[graph]
    plan = manifest.path(entry.file, f"engines.{graph}.file")
    checked_sha256({plan: (entry.sha256, f"engines.{graph}.sha256")}, manifest.directory or plan.parent)  # as the runtime's loader does
    (version / "model.plan").write_bytes(plan.read_bytes())


def write_repository(manifest: Manifest, out: str | Path, options: RepoOptions, force: bool = False) -> Path:
    """Write the repository for the export `manifest` was read from (Manifest.read(DIR)) to `out`
    (atomically; an existing `out` only with force). Raises RwkvExportError for what Triton cannot express."""
    reason = unsupported(manifest, options)
    if reason:
        raise RwkvExportError(f"cannot make a Triton repository of '{manifest.directory}': {reason}")
    initial = manifest.initial_state(1)  # one sequence
    with atomic_directory(out, force=force) as tmp:
        for graph in GRAPHS:
            target = tmp / options.model_name(graph)
            _write_model(manifest, graph, options, target)
            data_files = set()
            for spec in manifest.state:
                data = initial_data(spec, initial[spec.name], options)
                if data is not None:
                    (target / "initial_state").mkdir(exist_ok=True)
                    (target / "initial_state" / f"{spec.name}.bin").write_bytes(data.tobytes())
                    data_files.add(spec.name)
            (target / "config.pbtxt").write_text(config_text(manifest, graph, options, data_files))
        (tmp / "README.md").write_text(request_flow(manifest, options))
    return Path(out)


def request_flow(manifest: Manifest, options: RepoOptions) -> str:
    """The repository's README: which model to call, with what, in which order."""
    prefill, step = options.model_name("prefill"), options.model_name("step")
    batch = "[1, T]" if options.max_batch_size > 0 else "[1, T] (no batching: max_batch_size 0)"
    return f"""# Triton model repository (rwkv-export)

Model: {describe(model_summary(manifest))}; backend `{options.backend}`, max_batch_size {options.max_batch_size}.

Both models are *sequence models*: Triton keeps the recurrent state ({", ".join(s.name for s in manifest.state)})
per sequence (correlation id) inside the model (implicit state) and resets it to its `initial_state` on the
request flagged `sequence_start`. A sequence stays on one model from start to end.

- `{prefill}`: request 1 (`sequence_start=True`) carries the prompt, `tokens` {batch}; every later request
  carries the tokens to append (one sampled token, or more text), `sequence_end=True` on the last. The
  response is `logits` of the request's last token. Decoding through the prefill graph at T = 1 equals the
  step graph (`rwkv-export verify` checks it). Requests run together in one batch must have the same T
  (Triton concatenates the slots' tensors on the batch axis; it does not pad): decode requests (T = 1)
  always batch; a prompt can be sent in fixed-size chunks (chunking is exact, also checked by verify).
- `{step}`: one token per request (`tokens` [1]), for sequences fed token by token; the cheapest decode.

Sampling (temperature, top-p) is the client's: the models return logits.
"""
