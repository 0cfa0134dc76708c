"""manifest.json: the exported directory describes itself well enough for a serving system.

It lists each graph's inputs and outputs (name, dtype, shape with symbolic dims, role), which output
state feeds which input, each state's initial value, the RWKV version and hyper-parameters, vocab and
tokenizer, export options, package versions and each file's sha256.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from rwkv_export import __version__
from rwkv_export.errors import RwkvExportError

MANIFEST = "manifest.json"
FORMAT = "rwkv-export/1"


def package_versions() -> dict[str, str]:
    versions = {"rwkv-export": __version__, "python": platform.python_version()}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Load and sanity-check DIR/manifest.json; one-line errors for every way it can be wrong."""
    directory = Path(directory)
    if not directory.exists():
        raise RwkvExportError(f"export directory '{directory}' does not exist")
    if not directory.is_dir():
        raise RwkvExportError(f"'{directory}' is not a directory (expected the output of `rwkv-export export`)")
    path = directory / MANIFEST
    if not path.is_file():
        raise RwkvExportError(f"'{directory}' has no {MANIFEST}: not an rwkv-export output directory")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RwkvExportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise RwkvExportError(f"{path}: manifest format '{found}' is not supported (expected '{FORMAT}'); re-export with this version")
    return manifest
