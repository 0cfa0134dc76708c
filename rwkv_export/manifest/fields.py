"""Typed reading of a parsed JSON document: every getter names the field it checks.

    obj = Obj(data, "graphs.prefill")
    file = obj.get("file", file_name)            # FieldError("graphs.prefill.file", "missing")
    dims = obj.get("shape", shape)               # ... "expected a list of ints or dim names"
    obj.done()                                   # FieldError("graphs.prefill.extra", "unknown field")

A checker is `check(value, where) -> value`; it raises FieldError(where, what was expected). The
manifest turns a FieldError into one line: `DIR/manifest.json: <where>: <message>`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any, TypeVar

T = TypeVar("T")
Check = Callable[[Any, str], T]

MAX_DIM = 1 << 24  # any static dim of a tensor (vocab 65536, n_embd 8192 are far below)
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FieldError(Exception):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


class Obj:
    """A JSON object being read; keys not asked for by the time of done() are unknown fields."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise FieldError(where or "manifest", f"expected an object, got {kind(value)}")
        self.data, self.where = value, where
        self.seen: set[str] = set()

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, check: Check[T], default: Any = ...) -> T:
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                raise FieldError(self.at(key), "missing")
            return default
        return check(self.data[key], self.at(key))

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.seen]
        if unknown:
            raise FieldError(self.at(str(unknown[0])), "unknown field")


def kind(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", int: "an int", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise FieldError(where, f"expected a non-empty string, got {kind(value)}")
    return value


def integer(lo: int = 0, hi: int = 1 << 62) -> Check[int]:
    def check(value: Any, where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise FieldError(where, f"expected an int, got {kind(value)}")
        if not lo <= value <= hi:
            raise FieldError(where, f"{value} is out of range ({lo}..{hi})")
        return value

    return check


def number(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise FieldError(where, f"expected a number, got {kind(value)}")
    if not math.isfinite(value):
        raise FieldError(where, f"expected a finite number, got {value}")
    return float(value)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(where, f"expected true or false, got {kind(value)}")
    return value


def one_of(*choices: str) -> Check[str]:
    def check(value: Any, where: str) -> str:
        if value not in choices:
            shown = repr(value) if isinstance(value, str) else kind(value)
            raise FieldError(where, f"expected one of {', '.join(choices)}, got {shown}")
        return str(value)

    return check


def sha256(value: Any, where: str) -> str:
    if not isinstance(value, str) or not SHA256.match(value):
        raise FieldError(where, "expected a sha256 (64 lowercase hex digits)")
    return value


def nullable(check: Check[T]) -> Check[T | None]:
    def wrapped(value: Any, where: str) -> T | None:
        return None if value is None else check(value, where)

    return wrapped


def list_of(check: Check[T], min_len: int = 0, max_len: int = 4096) -> Check[tuple[T, ...]]:
    def wrapped(value: Any, where: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise FieldError(where, f"expected a list, got {kind(value)}")
        if not min_len <= len(value) <= max_len:
            raise FieldError(where, f"expected {min_len}..{max_len} entries, got {len(value)}")
        return tuple(check(item, f"{where}[{i}]") for i, item in enumerate(value))

    return wrapped


def dict_of(check: Check[T], key: Check[str] = string, min_len: int = 0) -> Check[dict[str, T]]:
    def wrapped(value: Any, where: str) -> dict[str, T]:
        if not isinstance(value, dict):
            raise FieldError(where, f"expected an object, got {kind(value)}")
        if len(value) < min_len:
            raise FieldError(where, f"expected at least {min_len} {'entry' if min_len == 1 else 'entries'}, got {len(value)}")
        return {key(k, f"{where}.{k}"): check(v, f"{where}.{k}") for k, v in value.items()}

    return wrapped


def file_name(value: Any, where: str) -> str:
    """A path relative to the export directory that stays inside it (no '..', not absolute)."""
    if not isinstance(value, str) or not value:
        raise FieldError(where, f"expected a file name inside the export directory, got {kind(value)}")
    path = PurePosixPath(value)
    if path.is_absolute() or "\\" in value or "\0" in value or ".." in path.parts or value.startswith("~"):
        raise FieldError(where, f"file name {value!r} is outside the export directory")
    return value


def dim(value: Any, where: str) -> int | str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_DIM:
            raise FieldError(where, f"dim {value} is out of range (1..{MAX_DIM})")
        return value
    raise FieldError(where, f"expected an int or a dim name, got {kind(value)}")


def shape(value: Any, where: str) -> tuple[int | str, ...]:
    if not isinstance(value, list) or len(value) > 8:
        raise FieldError(where, "expected a list of ints or dim names (rank <= 8)")
    return tuple(dim(d, f"{where}[{i}]") for i, d in enumerate(value))
