"""`make-checkpoint --version`: every RWKV version, read back by the checkpoint stage and `info`.

Oracles: the checkpoint stage's own key/shape inference (load_checkpoint re-derives version, heads
and LoRA ranks from the tensors, independently of the options that made them), the random maker
called directly (same seed, same tensors), and the parameter count summed from the loaded tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.checkpoint.random import random_weights
from tests.cli.test_cli import _invoke, _one_line_error

# version -> (head size option, LoRA option, expected n_head, expected ffn) for 2 layers x 64 wide
CASES = {
    "4": (None, None, None, 256),
    "5.1": ("16", None, 4, 256),
    "5.2": (None, None, 1, 256),  # the default head size, 64
    "6": ("32", "8", 2, 224),  # ffn 3.5 x 64 = 224 (a multiple of 32)
    "7": ("16", "12", 4, 256),
}


@pytest.mark.parametrize("version", list(CASES))
def test_each_version_loads_back_and_info_reports_it(tmp_path: Path, version: str) -> None:
    head, lora, n_head, ffn = CASES[version]
    out = tmp_path / f"v{version}.safetensors"
    args = ["make-checkpoint", "--layers", "2", "--embd", "64", "--vocab", "97", "--seed", "3", "-o", str(out)]
    if version != "4":
        args += ["--version", version]
    args += ["--head-size", head] if head else []
    args += ["--lora", lora] if lora else []
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert f"RWKV-{version}, 2 x 64" in result.stderr

    ckpt = load_checkpoint(out)
    cfg = ckpt.config
    assert (cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.ffn_size) == (version, 2, 64, 97, ffn)
    if n_head is not None:
        assert (cfg.n_head, cfg.head_size) == (n_head, 64 // n_head)
    if version == "6":
        assert cfg.lora_mix == cfg.lora_decay == 8
    if version == "7":
        assert cfg.lora_decay == cfg.lora_a == cfg.lora_gate == 12
    # same seed, same weights as the maker called directly
    _, direct = random_weights(version, 2, 64, 97, None, 64 // (n_head or 1), int(lora or 32), seed=3)
    assert set(direct) == set(ckpt.weights)
    assert all(torch.equal(direct[k], ckpt.weights[k]) for k in direct)

    info = _invoke("info", str(out), "--json")
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert facts == {
        **facts,
        "rwkv_version": version,
        "n_layer": 2,
        "n_embd": 64,
        "vocab_size": 97,
        "ffn_size": ffn,
        "format": "safetensors",
        "dtype": "float32",
        "parameters": sum(t.numel() for t in ckpt.weights.values()),
    }
    if n_head is None:
        assert "n_head" not in facts and "head_size" not in facts
    else:
        assert (facts["n_head"], facts["head_size"]) == (n_head, 64 // n_head)


def test_default_is_rwkv4_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "m.pth"
    assert _invoke("make-checkpoint", "--layers", "1", "--embd", "8", "--vocab", "11", "-o", str(out)).exit_code == 0
    ckpt = load_checkpoint(out)
    _, direct = random_weights("4", 1, 8, 11)
    assert ckpt.config.version == "4" and all(torch.equal(direct[k], ckpt.weights[k]) for k in direct)


def test_half_precision_later_version(tmp_path: Path) -> None:
    out = tmp_path / "m.pth"
    result = _invoke(
        "make-checkpoint",
        "--version",
        "7",
        "--layers",
        "2",
        "--embd",
        "32",
        "--head-size",
        "8",
        "--vocab",
        "11",
        "--dtype",
        "bfloat16",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    cfg = load_checkpoint(out).config
    assert (cfg.version, cfg.dtype, cfg.n_head) == ("7", "bfloat16", 4)


def test_bad_combinations_exit_2_with_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "m.pth")
    base = ["make-checkpoint", "--layers", "2", "--vocab", "97", "-o", out]
    _one_line_error(_invoke(*base, "--version", "6", "--embd", "100"), "n_embd) 100 is not a multiple of the head size 64")
    _one_line_error(_invoke(*base, "--version", "7", "--embd", "64", "--head-size", "48"), "not a multiple of the head size 48")
    _one_line_error(_invoke(*base, "--embd", "64", "--head-size", "16"), "--head-size applies to RWKV-5/6/7")
    _one_line_error(_invoke(*base, "--version", "5.2", "--embd", "64", "--lora", "8"), "--lora applies to RWKV-6 and RWKV-7")
    _one_line_error(_invoke(*base, "--embd", "64", "--lora", "8"), "--lora applies to RWKV-6 and RWKV-7")
    bad_version = _invoke(*base, "--version", "8", "--embd", "64")
    assert bad_version.exit_code == 2 and "'8' is not one of" in bad_version.stderr
    assert not (tmp_path / "m.pth").exists(), "a refused checkpoint writes nothing"
    assert not list(tmp_path.iterdir())
