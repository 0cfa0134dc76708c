"""Checks a checkpoint passes before anything is allocated from what it claims.

Every loader calls these on untrusted input: the file kind (a FIFO or device would block a read),
the key names (strings of a strict grammar, block indices bounded by the blocks the file holds, so
a key naming block 10^9 cannot make the loader build 10^9 layers), the zip entries of a `.pth`
(their declared uncompressed sizes, so a small file cannot inflate to gigabytes), JSON side files
(size, UTF-8, nesting depth, an object at the top) and, last, that every weight is finite.
Each failure is one RwkvExportError line naming the file and the offending key or field.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from rwkv_export.errors import RwkvExportError

NONFINITE_OPTION = "--allow-nonfinite"
MAX_JSON_BYTES = 1 << 20  # config.json of a real model is ~1 KiB
MAX_JSON_DEPTH = 64
MAX_KEY_LENGTH = 256
# A .pth written by torch.save stores its records uncompressed; a re-zipped one may compress them.
# Its records may declare at most this many times the file's length (plus a little) once inflated.
MAX_INFLATION = 16
FINITE_CHUNK = 1 << 24
INFLATION_SLACK = 1 << 20
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_BLOCK = re.compile(r"blocks\.(0|[1-9][0-9]{0,8})\.")


def regular_file(path: Path, what: str = "file") -> int:
    """The size of `path`, refusing anything but a regular file (stat first: a FIFO never blocks here)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise RwkvExportError(f"{path}: cannot read the {what} ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise RwkvExportError(f"{path}: the {what} is not a regular file (a FIFO, device or socket is refused)")
    return st.st_size


def check_keys(keys: Mapping[Any, Any] | list[Any], where: str) -> int:
    """Refuse non-string or malformed keys; return the number of blocks (0..n-1 must all be named)."""
    blocks: set[int] = set()
    for key in keys:
        if not isinstance(key, str):
            raise RwkvExportError(f"{where}: key {str(key)[:60]!r} is a {type(key).__name__}, expected a string tensor name")
        if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
            raise RwkvExportError(f"{where}: key {key[:80]!r} is not a tensor name (letters, digits, '_' and '.')")
        if key.startswith("blocks."):
            match = _BLOCK.match(key)
            if match is None:
                raise RwkvExportError(f"{where}: key {key[:80]!r} does not name a block as blocks.<index>.<name>")
            blocks.add(int(match.group(1)))
    if blocks and max(blocks) >= len(blocks):
        gap = min(set(range(len(blocks))) - blocks)
        raise RwkvExportError(
            f"{where}: a key names block {max(blocks)} but the checkpoint holds {len(blocks)} blocks (block {gap} is absent)"
        )
    return len(blocks)


def check_rank(weights: Mapping[str, torch.Tensor], key: str, ndim: int, where: str) -> tuple[int, ...]:
    """The shape of `key`, which must have `ndim` dimensions, each at least 1."""
    shape = tuple(weights[key].shape)
    if len(shape) != ndim or min(shape, default=1) < 1:
        raise RwkvExportError(f"{where}: '{key}' has shape {list(shape)}, expected {ndim} non-empty dimensions")
    return shape


def check_nonempty(weights: Mapping[str, torch.Tensor], where: str) -> None:
    """Every tensor has one or more dimensions, each >= 1 (a 0-D or empty tensor describes no layer)."""
    for key, tensor in weights.items():
        if tensor.dim() == 0 or min(tensor.shape) < 1:
            raise RwkvExportError(f"{where}: '{key}' has shape {list(tensor.shape)}: every tensor needs one or more dimensions, each >= 1")


def check_finite(weights: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse NaN / Inf weights, naming the first tensor that holds any (checked 16M values at a time:
    torch.isfinite makes an abs copy and two masks of what it checks)."""
    for key, tensor in weights.items():
        if not tensor.is_floating_point():
            continue
        flat = tensor.reshape(-1)
        if all(bool(torch.isfinite(part).all()) for part in flat.split(FINITE_CHUNK)):
            continue
        bad = sum(int((~torch.isfinite(part)).sum()) for part in flat.split(FINITE_CHUNK))
        raise RwkvExportError(
            f"{where}: '{key}' holds {bad} NaN/Inf value(s) of {tensor.numel()}; pass {NONFINITE_OPTION} to load it anyway"
        )


def check_zip_sizes(path: Path, size: int) -> None:
    """A zip .pth: refuse records whose declared inflated size the file's length cannot justify."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise RwkvExportError(f"{path}: not a readable PyTorch checkpoint (broken zip archive: {exc})") from None
    declared = sum(e.file_size for e in entries)
    limit = MAX_INFLATION * size + INFLATION_SLACK
    if declared > limit:
        raise RwkvExportError(
            f"{path}: its zip records declare {declared:,} bytes once inflated, more than a "
            f"{size:,}-byte checkpoint can hold (limit {limit:,}); refusing to inflate them"
        )


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def read_json_object(path: Path) -> dict[str, Any]:
    """A small JSON object file: bounded size and depth, UTF-8, an object at the top."""
    size = regular_file(path, "JSON file")
    if size > MAX_JSON_BYTES:
        raise RwkvExportError(f"{path}: {size:,} bytes is too large for a config file (limit {MAX_JSON_BYTES:,})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RwkvExportError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    depth = _max_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise RwkvExportError(f"{path}: nested {depth} levels deep (limit {MAX_JSON_DEPTH})")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RwkvExportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (RecursionError, ValueError) as exc:  # ValueError: int of > 4300 digits
        raise RwkvExportError(f"{path}: not valid JSON ({str(exc)[:100]})") from None
    if not isinstance(obj, dict):
        raise RwkvExportError(f"{path}: expected a JSON object at the top, found {type(obj).__name__}")
    return obj


def _max_depth(text: str) -> int:
    """Bracket nesting outside strings, counted without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def json_int(config: Mapping[str, Any], field: str, where: str) -> int | None:
    """An optional non-negative integer field of a JSON config (bool and float refused)."""
    value = config.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < sys.maxsize:
        raise RwkvExportError(f"{where}: '{field}' is {str(value)[:40]!r}, expected a non-negative integer")
    return value
