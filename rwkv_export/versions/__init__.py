"""The version registry: one entry per RWKV version with everything the stages need to know about it.

In the role of optimum's per-architecture `OnnxConfig`, as plain data (no torch, no onnx import, so
every stage can read it). Each version's file here (rwkv4.py .. rwkv7.py) holds its `VersionInfo`
(info.py): the reference model class, the WKV op (schema, bodies and kernels live in the op registry,
custom_ops/), the recurrent state tensors with shapes and initial values, the checkpoint's keys and
shapes per block, how to read the typed config fields off them and how to recognise the version,
the GroupNorm eps and float16 rescale rules, and what peers (transformers, the `rwkv` package) run.

Adding a version is one file here plus its model file and op file (README, "Adding an RWKV version").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rwkv_export.errors import RwkvExportError
from rwkv_export.versions.info import BlockShapes, StateTensor, VersionInfo
from rwkv_export.versions.rwkv4 import PP_INIT, RWKV4
from rwkv_export.versions.rwkv5 import RWKV51, RWKV52
from rwkv_export.versions.rwkv6 import RWKV6
from rwkv_export.versions.rwkv7 import RWKV7

__all__ = ["DETECTION_ORDER", "KNOWN_VERSIONS", "PP_INIT", "VERSIONS", "BlockShapes", "StateTensor", "VersionInfo",
           "detect_version", "state_shapes", "version_info"]  # fmt: skip

VERSIONS: dict[str, VersionInfo] = {v.version: v for v in (RWKV4, RWKV51, RWKV52, RWKV6, RWKV7)}
KNOWN_VERSIONS = tuple(VERSIONS)
DETECTION_ORDER = ("7", "6", "5.2", "5.1", "4")  # most specific markers first


def version_info(version: str) -> VersionInfo:
    """The registry entry of `version`; a one-line error naming the known ones otherwise."""
    info = VERSIONS.get(version)
    if info is None:
        raise RwkvExportError(f"unknown RWKV version '{version}' (expected one of {', '.join(KNOWN_VERSIONS)})")
    return info


def detect_version(keys: Iterable[str]) -> str:
    """The version of a state dict in BlinkDL naming, from the registry's key markers."""
    keys = list(keys)

    def has(suffix: str) -> bool:
        return any(k.endswith(suffix) for k in keys)

    for version in DETECTION_ORDER:
        if any(all(has(s) for s in group) for group in VERSIONS[version].markers):
            return version
    raise AssertionError("unreachable: RWKV-4's empty marker group always matches")


def state_shapes(config: Any, batch: int | str) -> dict[str, tuple[int | str, ...]]:
    """Each state tensor's shape for `config` (a ModelConfig), in graph-input order; `batch` may be
    a number or a symbolic name."""
    sizes: Mapping[str, Any] = {"batch": batch}
    return {t.name: tuple(sizes[d] if d in sizes else getattr(config, d) for d in t.dims) for t in version_info(config.version).state}
