"""The one exception type for user-facing problems.

Anything the user can fix (a wrong path, key, shape, dtype, option) raises `RwkvExportError` with a
message that says what failed, what was expected and what was found. The CLI prints it as one line
and exits 2; it never shows a traceback for these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported where ids are checked: the registries import this module bare
    import numpy as np


class RwkvExportError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's first line (at most `limit` characters), or its type name if it says nothing:
    what a one-line error quotes of the cause."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def check_token_ids(ids: Any, vocab_size: int, who: str = "", scope: str = " for this model") -> np.ndarray:
    """`ids` as a numpy array, refused (one line, prefixed by `who`) unless every id is an integer in
    [0, vocab): the check every runtime and the reference make before an embedding lookup. A runner
    names itself in `who` and speaks of its graph, not the model (scope "")."""
    import numpy as np

    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise RwkvExportError(f"{who}token ids must be integers, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        first = int(ids[bad].flat[0])
        raise RwkvExportError(f"{who}token id {first} is out of range{scope} (vocab {vocab_size}: ids 0..{vocab_size - 1})")
    return ids
