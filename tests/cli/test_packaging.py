"""The installed wheel exposes one namespace: everything under `rwkv_export`, nothing else at the top
level of site-packages (custom_ops/ ships as rwkv_export.ops, plugins/ as rwkv_export.kernels)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Repository folder -> the package name it ships as (pyproject's package-dir).
SOURCE_PACKAGES = {"rwkv_export": "rwkv_export", "custom_ops": "rwkv_export.ops", "plugins": "rwkv_export.kernels"}


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Build the wheel from a copy of the sources (setuptools writes build/ beside them)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", *SOURCE_PACKAGES):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("rwkv_export-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_wheel_has_one_top_level_package(wheel_names: list[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert tops - dist_info == {"rwkv_export"}


def test_every_source_package_is_in_the_wheel(wheel_names: list[str]) -> None:
    """A subpackage missing from pyproject's explicit list would vanish from the wheel: list them all."""
    shipped = {name.rsplit("/", 1)[0].replace("/", ".") for name in wheel_names if name.endswith("/__init__.py")}
    expected = set()
    for folder, package in SOURCE_PACKAGES.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            expected.add(".".join((package, *relative)))
    assert expected <= shipped, f"not shipped: {sorted(expected - shipped)}"


def test_kernel_sources_ship_with_the_kernels_package(wheel_names: list[str]) -> None:
    sources = {Path(n).name for n in wheel_names if n.startswith("rwkv_export/kernels/") and n.endswith((".cu", ".cuh"))}
    expected = {p.name for p in (ROOT / "plugins").iterdir() if p.suffix in (".cu", ".cuh")}
    assert sources == expected and sources
