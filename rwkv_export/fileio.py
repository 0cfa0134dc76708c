"""Atomic file and directory writes: nothing the user had is half-overwritten.

Files are written to a temporary sibling and moved into place with os.replace (atomic on POSIX).
Output directories are assembled in a temporary sibling and renamed into place at the end (swapped
atomically with an existing one); an existing directory is replaced only when the caller passes
force=True. An existing directory is changed as one step through a staged, hard-linked copy.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rwkv_export.errors import RwkvExportError


def user_cache_dir(*parts: str) -> Path:
    """The per-user cache ($RWKV_EXPORT_CACHE, else $XDG_CACHE_HOME/rwkv-export, else
    ~/.cache/rwkv-export), joined with `parts` (e.g. "ptx", "bench")."""
    root = os.environ.get("RWKV_EXPORT_CACHE")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rwkv-export"
    return base.joinpath(*parts)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _public(path: str | os.PathLike[str], directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give them the permissions a plain open() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _public(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def atomic_output_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it into place, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    _public(tmp)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def refuse_existing(path: Path, force: bool, what: str = "output") -> None:
    if path.exists() and not force:
        raise RwkvExportError(f"{what} '{path}' already exists; pass --force to replace it")


# Temporary siblings of an output directory DIR are named `.DIR.<kind>-<pid>-<random>`: a run killed
# with SIGKILL leaves its sibling behind, and the next run on DIR removes those whose process is gone.
_SIBLING_KINDS = ("partial", "old", "stage")


def _sibling(path: Path, kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-{os.getpid()}-", dir=path.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_siblings(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary siblings of `path` left by runs that were killed; return what was removed.

    A killed swap can leave DIR absent with the previous export in an `old` sibling: that one is
    moved back to DIR rather than deleted.
    """
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for entry in sorted(path.parent.glob(f".{glob.escape(path.name)}.*-*-*")):
        kind, _, rest = entry.name[len(path.name) + 2 :].partition("-")
        pid = rest.partition("-")[0]
        if kind not in _SIBLING_KINDS or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not path.exists() and (entry / "dir").is_dir():
            os.replace(entry / "dir", path)  # killed between the two renames of _move_into_place
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if sys.platform != "linux":
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


def _move_into_place(tmp: Path, path: Path) -> None:
    """Put directory `tmp` at `path`; at every instant `path` is the old directory or the new one
    (with renameat2; elsewhere it is absent for a moment, the old one kept in an `old` sibling)."""
    if not path.exists():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
    else:
        old = _sibling(path, "old")
        os.replace(path, old / "dir")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling; move it to `path` only when the block succeeds.

    Killed at any moment, `path` is absent, the old directory or the new one, never a mixture; the
    next run removes the temporary siblings a killed run left.
    """
    path = Path(path)
    refuse_existing(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(path)
    tmp = _sibling(path, "partial")
    _public(tmp, directory=True)
    try:
        yield tmp
        _move_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_update(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Change an existing directory as one step: yield a staged copy (files hard-linked, so write
    only by replacing files, never in place); it replaces `path` only when the block succeeds."""
    path = Path(path)
    clean_stale_siblings(path)
    stage = _sibling(path, "stage")
    try:
        os.rmdir(stage)
        shutil.copytree(path, stage, copy_function=_link_or_copy)
        yield stage
        _move_into_place(stage, path)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
