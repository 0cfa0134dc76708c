"""Options used by several verbs, defined once (help text included)."""

from __future__ import annotations

import click

json_flag = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
force_flag = click.option("--force", is_flag=True, help="Replace an existing output instead of refusing.")
quiet_flag = click.option("-q", "--quiet", is_flag=True, help="No progress or log lines on stderr.")
checkpoint_arg = click.argument("checkpoint", type=click.Path(path_type=str))


def examples(*lines: str) -> str:
    """A help epilog with an Examples section (click keeps \\b blocks unwrapped)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
