"""Option values are checked by click types with ranges: each bad one is one line naming the option, exit 2.

None of these needs a model: the value is refused while the command line is parsed, before any
file is opened (the paths given do not exist, so a value that passes shows as the later
"does not exist" error instead).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rwkv_export.cli import cli

RUN = ("run", "/nonexistent-export", "--prompt", "x")


@pytest.mark.parametrize("args,option,fragment", [
    (RUN + ("--top-p", "1.5"), "--top-p", "1.5 is not in the range 0<x<=1"),
    (RUN + ("--top-p", "nan"), "--top-p", "'nan' is not a finite number"),
    (RUN + ("--top-p", "0"), "--top-p", "0<x<=1"),
    (RUN + ("--temperature", "nan"), "--temperature", "'nan' is not a finite number"),
    (RUN + ("--temperature", "inf"), "--temperature", "'inf' is not a finite number"),
    (RUN + ("--temperature", "-1"), "--temperature", "x>=0"),
    (RUN + ("--seed", "-1"), "--seed", "-1 is not in the range 0<=x<=18446744073709551615"),
    (RUN + ("--seed", str(2**64)), "--seed", "is not in the range"),
    (("run", "/nonexistent-export", "--tokens", "99999999999999999999"), "--tokens", "token id 99999999999999999999 is out of range"),
    (("run", "/nonexistent-export", "--tokens", "1,-5"), "--tokens", "token id -5 is out of range"),
    (("run", "/nonexistent-export", "--tokens", "1,x"), "--tokens", "expected comma-separated integers"),
    (RUN + ("--top-k", "1" * 25), "--top-k", "is not in the range 0<=x<=2147483647"),
    (RUN + ("--max-tokens", "99999999999999999999"), "--max-tokens", "is not in the range"),
    (("verify", "/nonexistent.pth", "--seed", "-1"), "--seed", "is not in the range"),
    (("make-checkpoint", "--layers", "1", "--embd", "8", "--vocab", "9", "-o", "/nonexistent/x.pth", "--seed", "1" * 30), "--seed",
     "is not in the range"),
    (("bench", "--seq", "99999999999"), "--seq", "expected integers in 1 .. 1048576"),
    (("bench", "--steps", "1" * 20), "--steps", "is not in the range"),
    (("build", "/nonexistent-export", "--max-batch", "1" * 20), "--max-batch", "is not in the range"),
])  # fmt: skip
def test_bad_option_value_is_one_line(args: tuple[str, ...], option: str, fragment: str) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: Invalid value for '{option}'") and fragment in lines[0], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("args", [
    RUN + ("--top-p", "1", "--temperature", "0", "--seed", "0"),
    RUN + ("--top-p", "1e-9", "--temperature", "1e30", "--seed", str(2**64 - 1), "--top-k", "2147483647"),
    ("run", "/nonexistent-export", "--tokens", " 0, 2147483647 ,"),
])  # fmt: skip
def test_unusual_valid_values_pass_parsing(args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2 and result.stderr.splitlines() == ["error: export directory '/nonexistent-export' does not exist"]


def test_workspace_size_with_non_ascii_digits() -> None:
    result = CliRunner().invoke(cli, ["build", "/nonexistent-export", "--workspace", "\u00b2"])
    assert result.exit_code == 2 and "--workspace '\u00b2' is not a size" in result.stderr


def test_help_documents_allow_nonfinite() -> None:
    for verb in ("info", "convert", "export"):
        text = " ".join(CliRunner().invoke(cli, [verb, "--help"]).output.split())
        assert "--allow-nonfinite" in text and "NaN or Inf" in text, verb
