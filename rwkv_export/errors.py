"""The one exception type for user-facing problems.

Anything the user can fix (a wrong path, key, shape, dtype, option) raises `RwkvExportError` with a
message that says what failed, what was expected and what was found. The CLI prints it as one line
and exits 2; it never shows a traceback for these.
"""


class RwkvExportError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A library exception's first line (at most `limit` characters), or its type name if it says nothing:
    what a one-line error quotes of the cause."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
