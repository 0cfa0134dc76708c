"""The backends `verify` compares: torch reference (float64 oracle, float32, float16), ONNX Runtime on
each available provider for each exported dtype, and the native TensorRT engines where present.

Every backend is a runtime ModelSession (runtime/session.py): initial_state(batch), prefill(tokens
[B, T], state), step(tokens [B], state) -> (logits, state) and to_host(state), over the same runners
`run` and `bench` drive; `generate` drives them too.
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

from rwkv_export.errors import RwkvExportError
from rwkv_export.runtime.session import ExportedModel
from rwkv_export.runtime.torch_reference import TorchReference

ORACLE = "torch-float64"
TORCH_DTYPES = ("float32", "float16")
EXPORT_DTYPES = ("float32", "float16")
ORT_DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


# The backends are the runtime's own drivers over its runners, not wrappers of them: the torch
# reference (TorchReference, its prefill graph returning every position's logits: more to compare)
# and an exported directory on ONNX Runtime or its TensorRT engines (ExportedModel).
TorchBackend = TorchReference


def exported_backend(directory: Path, provider: str, name: str, threads: int = 0) -> ExportedModel:
    return ExportedModel(directory, provider, threads, name=name)


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

    from rwkv_export.manifest import Manifest
    from rwkv_export.runtime.loaders import engines_unavailable

    available = ort.get_available_providers()
    plans = []
    for name in names:
        kind, *rest = name.split("-")
        dtype = rest[-1]
        if name == ORACLE:
            continue
        if kind == "torch":
            plans.append(Plan(name, dtype, partial(TorchReference, checkpoint, dtype)))
            continue
        export = exports.get(dtype, "not exported")
        if isinstance(export, str):
            plans.append(Plan(name, dtype, None, export))
        elif kind == "ort" and ORT_DEVICES[rest[0]] not in available:
            plans.append(Plan(name, dtype, None, f"onnxruntime has no {ORT_DEVICES[rest[0]]} (install onnxruntime-gpu)"))
        elif kind == "ort":
            plans.append(Plan(name, dtype, partial(exported_backend, export, rest[0], name, threads)))
        else:
            reason = engines_unavailable(Manifest.read(export))
            plans.append(Plan(name, dtype, None if reason else partial(exported_backend, export, "tensorrt", name, threads), reason))
    return plans


def needed_exports(names: Sequence[str]) -> list[str]:
    """Export dtypes the chosen backends need."""
    return [d for d in EXPORT_DTYPES if any(n.startswith(("ort-", "tensorrt-")) and n.endswith(d) for n in names)]
