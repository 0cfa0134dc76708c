"""The `rwkv-export` command line: a click group whose verbs live in sibling modules.

Each verb is a thin call into the stages. Project errors become one line on stderr and exit 2
(`verify` exits 1 when a backend fails parity). Heavy imports (torch, onnx) happen inside the
verbs so that `--help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from rwkv_export import __version__
from rwkv_export.errors import RwkvExportError

EXIT_BAD_INPUT = 2
VERB_MODULES = ("checkpoint_cmds", "export_cmd", "demo_cmd", "run_cmd", "verify_cmd", "bench_cmd", "build_cmd", "triton_cmd", "eval_cmd")


class UserError(click.ClickException):
    """A RwkvExportError on its way out: one line on stderr, exit 2, no traceback."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class UsageLine(UserError):
    """A bad option value or usage of a verb: click's message as one line, exit 2."""

    def __init__(self, exc: click.UsageError) -> None:
        command = exc.ctx.command_path if exc.ctx is not None else "rwkv-export"
        super().__init__(f"{exc.format_message()} (see '{command} --help')")


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RwkvExportError as exc:
            raise UserError(str(exc)) from None
        except click.UsageError as exc:  # a verb's option failed its type: one line, not the usage block
            raise UsageLine(exc) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rwkv-export")
def cli() -> None:
    """Compile RWKV checkpoints into ONNX / TensorRT inference graphs and prove their parity.

    Exit codes: 0 OK, 1 a parity check failed, 2 bad input (one line on stderr: a bad checkpoint,
    directory or option value).
    """


for _name in VERB_MODULES:
    try:
        _module = importlib.import_module(f"rwkv_export.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a verb whose stage is not written yet
        if _exc.name != f"rwkv_export.cli.{_name}":
            raise
        continue
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="rwkv-export")
