"""Options used by several verbs, defined once (help text included), and the value types with ranges.

Every numeric option takes a click type with its range, so a bad value (1.5 for --top-p, nan for
--temperature, -1 for --seed, a 20-digit token id) is click's usage error: one line naming the
option, exit code 2, before any model is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from rwkv_export.checkpoint.validate import NONFINITE_OPTION

MAX_SEED = 2**64 - 1  # numpy's default_rng and torch.Generator both take 0 .. 2**64 - 1
MAX_TOKEN_ID = 2**31 - 1  # int32: larger than any vocabulary; the model's own range is checked on load
MAX_INT32 = 2**31 - 1

json_flag = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
force_flag = click.option("--force", is_flag=True, help="Replace an existing output instead of refusing.")
quiet_flag = click.option("-q", "--quiet", is_flag=True, help="No progress or log lines on stderr.")
checkpoint_arg = click.argument("checkpoint", type=click.Path(path_type=str))
allow_nonfinite_flag = click.option(
    NONFINITE_OPTION,
    "allow_nonfinite",
    is_flag=True,
    help="Load a checkpoint whose weights hold NaN or Inf (refused by default, naming the first such tensor).",
)


def shown_option(*decls: str, default: Any, help: str, type: Any = None, **attrs: Any) -> Any:
    """An option whose help shows its default ([default: ...])."""
    return click.option(*decls, type=type, default=default, show_default=True, help=help, **attrs)


def path_option(*decls: str, help: str, path_type: type = str, **attrs: Any) -> Any:
    """An optional file or directory option: None when not given."""
    return click.option(*decls, type=click.Path(path_type=path_type), default=None, help=help, **attrs)


def progress_printer(quiet: bool, prefix: str = "rwkv-export") -> Callable[[str], None]:
    """A progress callback: each message as one '[PREFIX] message' line on stderr, nothing with --quiet."""

    def show(message: str) -> None:
        if not quiet:
            click.echo(f"[{prefix}] {message}", err=True)

    return show


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf (click's own range lets nan through)."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FloatRange.convert(self, value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class TokenIds(click.ParamType):
    """Comma-separated token ids, each an integer in 0 .. MAX_TOKEN_ID (the text is passed on as given)."""

    name = "ids"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            if not (part.isascii() and part.lstrip("-").isdigit() and len(part) <= 20):
                self.fail(f"{part[:30]!r} is not a token id; expected comma-separated integers like 34,105,110.", param, ctx)
            if not 0 <= int(part) <= MAX_TOKEN_ID:
                self.fail(f"token id {part} is out of range (0 .. {MAX_TOKEN_ID}).", param, ctx)
        return value


TOP_P = FiniteFloatRange(0, 1, min_open=True)
TEMPERATURE = FiniteFloatRange(0)
SEED = click.IntRange(0, MAX_SEED)
TOKEN_IDS = TokenIds()


def bounded(low: int, high: int = MAX_INT32) -> click.IntRange:
    """An integer option with both ends set (an unbounded one lets 10**20 reach numpy or TensorRT)."""
    return click.IntRange(low, high)


def examples(*lines: str) -> str:
    """A help epilog with an Examples section (click keeps \\b blocks unwrapped)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
