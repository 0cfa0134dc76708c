"""The files an export directory holds, checked before use.

- `read_json`: manifest.json as a regular file of bounded size, UTF-8, no NaN/Infinity literals, not
  nested past what Python's parser survives: each a one-line error.
- `resolve`: a manifest file name -> a path that is a regular file inside the export directory
  (symbolic links that leave it are refused, and so are FIFOs and devices, which could block).
- `checked_sha256`: a file's sha256 compared with the manifest's. The first check hashes the file;
  later ones trust it while its size and modification time are unchanged (a small cache in the
  user cache directory, `$RWKV_EXPORT_CACHE` or `$XDG_CACHE_HOME/rwkv-export` or
  `~/.cache/rwkv-export`, file `sha256-cache.json`). `RWKV_EXPORT_HASH_CACHE=0` hashes every time.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from rwkv_export.errors import RwkvExportError
from rwkv_export.fileio import user_cache_dir

MAX_MANIFEST_BYTES = 16 << 20  # a 100-layer model's manifest is a few tens of KiB
CACHE_FILE = "sha256-cache.json"
CACHE_ENTRIES = 1024


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: Path) -> Any:
    """Parse `path`, a regular file of at most MAX_MANIFEST_BYTES, or raise a one-line error."""
    try:
        info = path.stat()
    except OSError as exc:
        raise RwkvExportError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise RwkvExportError(f"{path} is not a regular file")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise RwkvExportError(f"{path} is {info.st_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RwkvExportError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise RwkvExportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:
        raise RwkvExportError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise RwkvExportError(f"{path}: not valid JSON (nested too deeply)") from None


def resolve(directory: Path, name: str, field: str) -> Path:
    """DIR/name as a regular file inside DIR (after following links), or a one-line error naming `field`."""
    root = directory.resolve()
    path = (root / name).resolve()
    if root != path and root not in path.parents:
        raise RwkvExportError(f"{directory / 'manifest.json'}: {field}: '{name}' resolves outside the export directory")
    try:
        mode = path.stat().st_mode
    except OSError:
        raise RwkvExportError(f"{directory / 'manifest.json'}: {field}: '{name}' does not exist in {directory}") from None
    if not stat.S_ISREG(mode):
        raise RwkvExportError(f"{directory / 'manifest.json'}: {field}: '{name}' is not a regular file")
    return path


def _cache_path() -> Path | None:
    if os.environ.get("RWKV_EXPORT_HASH_CACHE", "1") == "0":
        return None
    return user_cache_dir() / CACHE_FILE


def _load_cache(path: Path | None) -> dict[str, list[Any]]:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _store_cache(path: Path | None, cache: dict[str, list[Any]]) -> None:
    if path is None:
        return
    from rwkv_export.fileio import atomic_write_json

    kept = dict(list(cache.items())[-CACHE_ENTRIES:])
    with contextlib.suppress(OSError):  # a read-only home only costs the fast path
        atomic_write_json(path, kept)


def file_sha256(path: Path) -> str:
    from rwkv_export.fileio import sha256_file

    return sha256_file(path)


def checked_sha256(files: dict[Path, tuple[str, str]], directory: Path) -> None:
    """files: path -> (expected sha256, manifest field). Hash (or trust the cache) and compare."""
    cache_path = _cache_path()
    cache = _load_cache(cache_path)
    changed = False
    for path, (expected, field) in files.items():
        info = path.stat()
        key, stamp = str(path), [info.st_size, info.st_mtime_ns]
        entry = cache.get(key)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamp and entry[2] == expected:
            continue
        actual = file_sha256(path)
        if actual != expected:
            raise RwkvExportError(
                f"{directory / 'manifest.json'}: {field}: {path.name} does not match its sha256 "
                f"(file {actual[:12]}..., manifest {expected[:12]}...); the file changed since export"
            )
        cache.pop(key, None)
        cache[key] = [*stamp, actual]
        changed = True
    if changed:
        _store_cache(cache_path, cache)
