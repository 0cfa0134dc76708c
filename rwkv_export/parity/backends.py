"""The backends `verify` compares: torch reference (float64 oracle, float32, float16), ONNX Runtime on
each available provider for each exported dtype, and the native TensorRT engines where present.

Every backend offers initial_state(batch), prefill(tokens [B, T], state), step(tokens [B], state)
-> (logits, state) and to_host(state): the interface of `ExportedModel`, which `generate` drives too.
Planning is separate from opening: a backend that cannot run here is planned with a skip reason,
so the report lists it as "skipped: <reason>" instead of leaving it out silently.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError

ORACLE = "torch-float64"
TORCH_DTYPES = ("float32", "float16")
EXPORT_DTYPES = ("float32", "float16")
ORT_DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class TorchBackend:
    """The reference model in one dtype, state converted to numpy at the boundary."""

    def __init__(self, checkpoint: Any, dtype: str) -> None:
        from rwkv_export.model import build_model

        self.model = build_model(checkpoint, dtype)
        self.name, self.dtype = f"torch-{dtype}", dtype
        cfg = checkpoint.config
        self.vocab_size, self.n_layer, self.n_embd = cfg.vocab_size, cfg.n_layer, cfg.n_embd
        self.state_type = type(self._initial(1))

    def __enter__(self) -> TorchBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _initial(self, batch: int) -> Any:
        """The model's own state NamedTuple (ChannelState for RWKV-4, HeadState for 5/6/7)."""
        return self.model.initial_state(batch)

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        return {name: t.numpy() for name, t in self._initial(batch)._asdict().items()}

    def _call(self, fn: Callable[..., Any], tokens: np.ndarray, state: dict[str, np.ndarray] | None, **kw: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        import torch

        from rwkv_export.model import check_tokens

        t = torch.as_tensor(np.asarray(tokens, np.int64))
        check_tokens(t, self.vocab_size)
        if state is None:
            state = self.initial_state(t.shape[0])
        fields = self.state_type._fields
        s = self.state_type(*(torch.as_tensor(np.asarray(state[n])).to(self.model.state_dtype) for n in fields))
        with torch.no_grad():
            logits, new = fn(t, s, **kw)
        return logits.numpy(), {name: v.numpy() for name, v in zip(fields, new)}

    def prefill(self, tokens: np.ndarray, state: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """tokens [B, T] -> logits [B, T, V] (every position: more to compare), new state."""
        return self._call(self.model.forward_sequence, tokens, state, all_logits=True)

    def step(self, tokens: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self._call(self.model.forward_step, tokens, state)

    @staticmethod
    def to_host(state: dict[str, Any]) -> dict[str, np.ndarray]:
        return state


class ExportedBackend:
    """An exported directory on ONNX Runtime (one provider) or on its TensorRT engines."""

    def __init__(self, directory: Path, provider: str, name: str, threads: int = 0) -> None:
        from rwkv_export.runtime import ExportedModel

        self.model = ExportedModel(directory, provider, threads)
        self.name, self.dtype = name, self.model.manifest["dtype"]

    def __enter__(self) -> ExportedBackend:
        self.model.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.__exit__(*exc)

    def initial_state(self, batch: int) -> dict[str, Any]:
        return self.model.initial_state(batch)

    def prefill(self, tokens: np.ndarray, state: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        return self.model.prefill(tokens, state)

    def step(self, tokens: np.ndarray, state: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        return self.model.step(tokens, state)

    def to_host(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.model.state_to_host(state)


# --- planning -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """One backend to run (open() builds it) or to report as skipped (skip says why)."""

    name: str
    dtype: str
    open: Callable[[], Any] | None
    skip: str | None = None


def all_names() -> list[str]:
    names = [ORACLE, *(f"torch-{d}" for d in TORCH_DTYPES)]
    for dtype in EXPORT_DTYPES:
        names += [f"ort-{dev}-{dtype}" for dev in ORT_DEVICES] + [f"tensorrt-{dtype}"]
    return names


def select(patterns: Sequence[str]) -> list[str]:
    """Backend names matching any pattern: a full name, a prefix ('ort', 'torch-float16'), or a glob ('*-float16')."""
    names = all_names()
    if not patterns:
        return names
    chosen = []
    for pattern in patterns:
        hits = [n for n in names if n == pattern or n.startswith(pattern + "-") or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise RwkvExportError(f"--backends {pattern!r} matches no backend (known: {', '.join(names)})")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in names if n in chosen]


def plan(names: Sequence[str], checkpoint: Any, exports: dict[str, Path | str], threads: int = 0) -> list[Plan]:
    """Plans for `names` (oracle excluded). `exports`: dtype -> exported dir, or -> a reason it is absent."""
    import onnxruntime as ort

    from rwkv_export.runtime.session import tensorrt_unavailable

    available = ort.get_available_providers()
    plans = []
    for name in names:
        kind, *rest = name.split("-")
        dtype = rest[-1]
        if name == ORACLE:
            continue
        if kind == "torch":
            plans.append(Plan(name, dtype, partial(TorchBackend, checkpoint, dtype)))
            continue
        export = exports.get(dtype, "not exported")
        if isinstance(export, str):
            plans.append(Plan(name, dtype, None, export))
        elif kind == "ort" and ORT_DEVICES[rest[0]] not in available:
            plans.append(Plan(name, dtype, None, f"onnxruntime has no {ORT_DEVICES[rest[0]]} (install onnxruntime-gpu)"))
        elif kind == "ort":
            plans.append(Plan(name, dtype, partial(ExportedBackend, export, rest[0], name, threads)))
        else:
            from rwkv_export.export.manifest import read_manifest

            reason = tensorrt_unavailable(export, read_manifest(export))
            plans.append(Plan(name, dtype, None if reason else partial(ExportedBackend, export, "tensorrt", name, threads), reason))
    return plans


def needed_exports(names: Sequence[str]) -> list[str]:
    """Export dtypes the chosen backends need."""
    return [d for d in EXPORT_DTYPES if any(n.startswith(("ort-", "tensorrt-")) and n.endswith(d) for n in names)]
