"""Prepare CI's type check of the TensorRT code (see .ci/run and mypy.ini); a development tool, not
part of the installed package.

    python scripts/mypy_setup.py .mypy_cache && mypy --config-file mypy.ini

Writes two things under DIR:
- DIR/trt-stubs: tensorrt-stubs with the lines no Python parser accepts repaired;
- DIR/rwkv-src/rwkv_export: the package as a wheel installs it (custom_ops/ as rwkv_export.ops,
  plugins/ as rwkv_export.kernels; pyproject's package-dir mapping), made of symlinks, because mypy
  cannot follow that mapping (nor the editable install's import hook). mypy.ini checks the files
  through it.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_patched_stubs(dest: str | os.PathLike[str]) -> Path:
    """Copy tensorrt-stubs' .pyi files to `dest`, repairing the lines no Python parser accepts.

    tensorrt-stubs 10.8-10.13 (generated stubs) declare parameters named `in` (a keyword) and
    parameters without a default after ones with a default, so mypy stops at a syntax error.
    The repair renames `in` to `in_` and gives such trailing parameters `= ...`; every other line
    stays as published. CI points mypy at `dest` (mypy.ini's mypy_path). Returns `dest`.
    """
    try:
        files = importlib.metadata.distribution("tensorrt-stubs").files or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise SystemExit("tensorrt-stubs is not installed: pip install --no-deps 'tensorrt-stubs>=10.13'") from exc
    out = Path(dest)
    for file in files:
        if file.suffix == ".pyi":
            target = out / str(file)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_repair_stub(Path(str(file.locate())).read_text(), str(file)))
    return out


def _repair_stub(text: str, name: str) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(1000):  # each round fixes the first line the parser rejects
        try:
            compile("".join(lines), name, "exec", dont_inherit=True, flags=0x400)  # PyCF_ONLY_AST
            return "".join(lines)
        except SyntaxError as exc:
            i = (exc.lineno or 1) - 1
            fixed = _repair_def(lines[i])
            if fixed == lines[i]:
                raise
            lines[i] = fixed
    raise SyntaxError(f"{name}: too many broken lines")


def _repair_def(line: str) -> str:
    """One `def f(a, in: X, b: Y = 1, c: Z)` line -> `def f(a, in_: X, b: Y = 1, c: Z = ...)`."""
    head, sep, rest = line.partition("(")
    depth, params, cur = 1, [], ""
    for pos, ch in enumerate(rest):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            params.append(cur)
            tail = rest[pos:]
            break
        if ch == "," and depth == 1:
            params.append(cur)
            cur = ""
        else:
            cur += ch
    else:
        return line
    seen_default, fixed = False, []
    for param in params:
        param = re.sub(r"^(\s*)in(\s*:)", r"\1in_\2", param)
        bare = param.strip()
        if "=" in bare:
            seen_default = True
        elif seen_default and bare and not bare.startswith("*"):
            param += " = ..."
        fixed.append(param)
    return head + sep + ",".join(fixed) + tail


NAMESPACE = {"ops": "custom_ops", "kernels": "plugins"}  # rwkv_export.<key> <- <value>/ (pyproject.toml)


def write_namespace(dest: str | os.PathLike[str], repo: Path = REPO) -> Path:
    """DEST/rwkv_export: symlinks to every entry of rwkv_export/ plus ops and kernels. Returns DEST."""
    out = Path(dest) / "rwkv_export"
    if out.exists():
        for entry in out.iterdir():
            entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    links = {p.name: p for p in (repo / "rwkv_export").iterdir() if p.name != "__pycache__"}
    links |= {name: repo / folder for name, folder in NAMESPACE.items()}
    for name, target in links.items():
        os.symlink(target, out / name)
    return Path(dest)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/mypy_setup.py DIR")
    print(write_patched_stubs(Path(sys.argv[1]) / "trt-stubs"), write_namespace(Path(sys.argv[1]) / "rwkv-src"))
