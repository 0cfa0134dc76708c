"""CLI verbs on checkpoints and export: results on stdout, one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.cli import cli
from tests.conftest import requires_shared, tiny_model


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _one_line_error(result, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert any(needle in line for line in lines), lines
    assert "Traceback" not in result.output and "Traceback" not in result.stderr


def test_info_json(random_ckpt: Path) -> None:
    result = _invoke("info", str(random_ckpt), "--json")
    assert result.exit_code == 0
    facts = json.loads(result.stdout)
    assert facts == {
        **facts,
        "format": "pth",
        "rwkv_version": "4",
        "n_layer": 3,
        "n_embd": 64,
        "vocab_size": 97,
        "ffn_size": 256,
        "dtype": "float32",
        "parameters": 174528,
    }


@requires_shared
def test_info_table_on_rwkvcpp() -> None:
    result = _invoke("info", str(tiny_model("4v0-660K", "FP16")))
    assert result.exit_code == 0
    assert "rwkvcpp" in result.stdout and "661,504" in result.stdout and "float16" in result.stdout


def test_make_checkpoint_and_convert(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = _invoke("make-checkpoint", "--layers", "2", "--embd", "16", "--vocab", "30", "--ffn", "40", "--seed", "4", "-o", str(out))
    assert result.exit_code == 0, result.output
    cfg = load_checkpoint(out).config
    assert (cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.ffn_size) == (2, 16, 30, 40)
    _one_line_error(_invoke("make-checkpoint", "--layers", "2", "--embd", "16", "--vocab", "30", "-o", str(out)), "already exists")
    _one_line_error(
        _invoke("make-checkpoint", "--layers", "2", "--embd", "16", "--vocab", "30", "-o", str(tmp_path / "m.txt")),
        "must end in .pth or .safetensors",
    )
    assert _invoke("convert", str(out), "-o", str(tmp_path / "hf")).exit_code == 0
    assert load_checkpoint(tmp_path / "hf").format == "hf"
    _one_line_error(_invoke("convert", str(out), "-o", str(tmp_path / "hf")), "already exists")


def test_help_has_examples() -> None:
    for verb in ("info", "make-checkpoint", "convert", "export"):
        result = _invoke(verb, "--help")
        assert result.exit_code == 0 and "Examples:" in result.output, verb


def test_export_bad_input(tmp_path: Path, random_ckpt: Path) -> None:
    _one_line_error(_invoke("export", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "o")), "does not exist")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    _one_line_error(_invoke("export", str(junk), "-o", str(tmp_path / "o")), "not a readable PyTorch checkpoint")
    result = _invoke("export", str(random_ckpt), "-o", str(tmp_path / "o"), "--dtype", "int8")
    assert result.exit_code == 2 and "int8" in result.stderr
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    _one_line_error(_invoke("export", str(random_ckpt), "-o", str(existing)), "already exists; pass --force")
    assert (existing / "keep.txt").read_text() == "user data", "refusing must leave the directory untouched"
    assert not list(tmp_path.glob(".o.*")), "no partial output directory left behind"


@pytest.mark.slow
def test_export_cli_force_replaces_atomically(tmp_path: Path, random_ckpt: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = _invoke("export", str(random_ckpt), "-o", str(out), "--force", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and result.stderr == ""
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "prefill.onnx", "step.onnx"]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    """README's first command: export, ORT generation equal to the reference's, a passing parity table."""
    result = _invoke("demo", "--out", str(tmp_path / "demo"), "--max-tokens", "8")
    assert result.exit_code == 0, result.output
    assert "greedy tokens equal to the float64 reference's: yes (8 tokens)" in result.stdout
    assert "ort-cpu-float32  PASS" in result.stdout and "demo: OK" in result.stdout
    assert (tmp_path / "demo" / "manifest.json").is_file()
    again = _invoke("demo", "--out", str(tmp_path / "demo"))
    assert again.exit_code == 2 and "already exists" in again.stderr
