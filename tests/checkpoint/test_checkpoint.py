"""Checkpoint stage: every format loads to the same tensors; bad input is one clear error."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import torch

from rwkv_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.checkpoint.versions import EXPORT_VERSIONS
from rwkv_export.errors import RwkvExportError
from rwkv_export.model import build_model, initial_state
from tests.conftest import requires_shared, tiny_model


def _logits(ckpt: Checkpoint, tokens: list[int]) -> torch.Tensor:
    model = build_model(ckpt, "float64")
    state = initial_state(ckpt.config, 1, torch.float64)
    return model.forward_sequence(torch.tensor([tokens]), state)[0]


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "hf", "rwkvcpp"])
def test_round_trip_is_identical(tmp_path: Path, random_ckpt: Path, fmt: str) -> None:
    src = load_checkpoint(random_ckpt)
    out = tmp_path / {"pth": "m.pth", "safetensors": "m.safetensors", "hf": "hf", "rwkvcpp": "m.bin"}[fmt]
    save_checkpoint(src, out, fmt)
    back = load_checkpoint(out)
    assert back.format == fmt and back.config == src.config
    assert set(back.weights) == set(src.weights)
    for key, tensor in src.weights.items():
        if fmt == "rwkvcpp" and key.endswith("time_decay"):
            # stored as -exp(d) in float32 and recovered with a log: 1-2 ulp
            torch.testing.assert_close(back.weights[key], tensor, rtol=3e-7, atol=3e-7, msg=f"{fmt} {key}")
        else:
            assert torch.equal(back.weights[key], tensor), f"{fmt}: {key} changed"
    tokens = [1, 5, 9, 96, 0]
    diff = (_logits(back, tokens) - _logits(src, tokens)).abs().max().item()
    assert diff < (1e-12 if fmt != "rwkvcpp" else 1e-5), f"{fmt}: logits differ by {diff}"


def test_fp16_and_bf16_checkpoints_load(tmp_path: Path) -> None:
    for dtype, name in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        config, weights = random_weights("4", 2, 32, 50, seed=3, dtype=dtype)
        path = tmp_path / f"m-{name}.safetensors"
        save_checkpoint(Checkpoint(config, weights, "random", path), path)
        ckpt = load_checkpoint(path)
        assert ckpt.config.dtype == name
        assert torch.isfinite(_logits(ckpt, [1, 2, 3])).all()


@requires_shared
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_rwkvcpp_tiny_v4_loads(precision: str) -> None:
    ckpt = load_checkpoint(tiny_model("4v0-660K", precision))
    cfg = ckpt.config
    assert (cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.ffn_size) == ("4", 4, 128, 256, 256)
    assert ckpt.parameter_count == 661_504  # the README's count
    assert ckpt.weights["blocks.0.att.time_mix_k"].shape == (1, 1, 128)
    assert cfg.dtype == ("float16" if precision == "FP16" else "float32")


@requires_shared
@pytest.mark.parametrize("stem,version", [("5v1-730K", "5.1"), ("5v2-730K", "5.2"), ("6v0-1m", "6"), ("7v0-834K", "7")])
def test_later_versions_load_with_their_version(stem: str, version: str) -> None:
    """RWKV-5/6/7 files load with the right version and size (their export: tests/export/test_export_v5_v7.py)."""
    ckpt = load_checkpoint(tiny_model(stem))
    assert ckpt.config.version == version and ckpt.parameter_count == TINY_PARAMETERS[stem]
    assert version in EXPORT_VERSIONS


def test_v5_pth_loads_by_name(tmp_path: Path) -> None:
    """A 5.2 .pth loads as 5.2; a v4 dict with stray v5 keys fails naming RWKV-5.2."""
    config, weights = random_weights("5.2", 2, 32, 50, seed=1)
    torch.save(weights, tmp_path / "v5.pth")
    ckpt = load_checkpoint(tmp_path / "v5.pth")
    assert ckpt.config == config and ckpt.config.group_norm_eps == 64e-5
    mixed = dict(random_weights("4", 2, 32, 50)[1])
    mixed["blocks.0.att.ln_x.weight"] = torch.ones(32)
    mixed["blocks.0.att.gate.weight"] = torch.ones(32, 32)
    torch.save(mixed, tmp_path / "mixed.pth")
    with pytest.raises(RwkvExportError, match=r"RWKV-5\.2"):
        load_checkpoint(tmp_path / "mixed.pth")


TINY_PARAMETERS = {"5v1-730K": 680_640, "5v2-730K": 731_904, "6v0-1m": 1_028_352, "7v0-834K": 829_888}  # the README's counts


@requires_shared
@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_rwkvcpp_tiny_later_versions_config(precision: str) -> None:
    """Shapes, heads and LoRA ranks of the README's table; rwkv.cpp's transforms undone."""
    expect = {
        "5v1-730K": ("5.1", 64, 256, {"n_head": 8, "head_size": 8, "group_norm_eps": 1e-5}),
        "5v2-730K": ("5.2", 64, 256, {"n_head": 8, "head_size": 8, "group_norm_eps": 1e-5}),
        "6v0-1m": ("6", 64, 224, {"n_head": 8, "head_size": 8, "lora_mix": 32, "lora_decay": 64, "group_norm_eps": 64e-5}),
        "7v0-834K": ("7", 64, 256, {"n_head": 1, "head_size": 64, "lora_decay": 32, "lora_a": 32, "lora_v": 32,
                                    "lora_gate": 32, "group_norm_eps": 64e-5}),
    }  # fmt: skip
    for stem, (version, embd, ffn, extra) in expect.items():
        cfg = load_checkpoint(tiny_model(stem, precision)).config
        assert (cfg.version, cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.ffn_size) == (version, 12, embd, 256, ffn), stem
        assert {k: getattr(cfg, k) for k in extra} == extra, stem
        assert cfg.dtype == ("float16" if precision == "FP16" else "float32")
    w = load_checkpoint(tiny_model("5v1-730K", precision)).weights
    assert w["blocks.0.att.time_decay"].shape == (8,) and w["blocks.0.att.time_mix_k"].shape == (1, 1, 64)
    w = load_checkpoint(tiny_model("6v0-1m", precision)).weights
    assert w["blocks.0.att.time_maa_w1"].shape == (64, 160) and w["blocks.0.att.time_maa_w2"].shape == (5, 32, 64)
    w = load_checkpoint(tiny_model("7v0-834K", precision)).weights
    assert "blocks.0.att.x_rwkvag" not in w and w["blocks.0.att.x_g"].shape == (1, 1, 64) and w["blocks.0.att.w1"].shape == (64, 32)


@pytest.mark.parametrize("version", ["5.1", "5.2", "6", "7"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors", "rwkvcpp", "rwkvcpp-fp16"])
def test_later_versions_round_trip(tmp_path: Path, version: str, fmt: str) -> None:
    config, weights = random_weights(version, 2, 32, 50, seed=4)
    out = tmp_path / ("m.safetensors" if fmt == "safetensors" else "m.pth" if fmt == "pth" else "m.bin")
    save_checkpoint(Checkpoint(config, weights, "random", out), out, fmt)
    back = load_checkpoint(out)
    assert set(back.weights) == set(weights)
    eps = 1e-5 if fmt.startswith("rwkvcpp") and version.startswith("5") else config.group_norm_eps  # rwkv.cpp runs v5 at 1e-5
    assert back.config.to_dict()["extra"] == {**config.to_dict()["extra"], "group_norm_eps": eps}
    for key, tensor in weights.items():
        found = back.weights[key].double()
        if fmt == "pth" or fmt == "safetensors":
            assert torch.equal(back.weights[key], tensor), f"{fmt}: {key} changed"
        else:  # float32 exp/log of v5 decays: relative 1e-5; FP16 matrices: half an fp16 ulp
            tol = 1e-3 if fmt == "rwkvcpp-fp16" and tensor.dim() >= 2 else 1e-5
            assert torch.allclose(found, tensor.double(), rtol=tol, atol=tol), (
                f"{fmt}: {key} differs by {(found - tensor.double()).abs().max():.2e}"
            )


def test_later_versions_refuse_hf_output(tmp_path: Path) -> None:
    config, weights = random_weights("6", 1, 32, 50)
    with pytest.raises(RwkvExportError, match="cannot write RWKV-6 as a Hugging Face directory"):
        save_checkpoint(Checkpoint(config, weights, "random", tmp_path), tmp_path / "hf", "hf")


@pytest.mark.parametrize("version,key,problem", [
    ("6", "blocks.1.att.time_maa_w2", "missing"), ("7", "blocks.1.att.k_a", "missing"), ("5.2", "blocks.0.att.bogus", "unknown"),
    ("7", "blocks.1.att.w1", "shape"), ("6", "blocks.0.att.time_faaaa", "shape"),
])  # fmt: skip
def test_later_versions_key_and_shape_errors(tmp_path: Path, version: str, key: str, problem: str) -> None:
    weights = random_weights(version, 2, 32, 50)[1]
    if problem == "missing":
        del weights[key]
        match = rf"RWKV-{re.escape(version)} key '{re.escape(key)}' is missing"
    elif problem == "unknown":
        weights[key] = torch.zeros(3)
        match = rf"unknown key '{re.escape(key)}' for an RWKV-{re.escape(version)} checkpoint"
    else:
        weights[key] = weights[key][..., :-1].clone()
        match = rf"'{re.escape(key)}' has shape .*(, expected|: heads x head size)"
    torch.save(weights, tmp_path / "bad.pth")
    with pytest.raises(RwkvExportError, match=match):
        load_checkpoint(tmp_path / "bad.pth")


def test_info_shows_later_versions(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from rwkv_export.cli import cli

    config, weights = random_weights("7", 2, 32, 50)
    save_checkpoint(Checkpoint(config, weights, "random", tmp_path / "v7.safetensors"), tmp_path / "v7.safetensors")
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "v7.safetensors"), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["rwkv_version"] == "7" and facts["n_layer"] == 2 and facts["parameters"] == sum(t.numel() for t in weights.values())


def test_missing_file() -> None:
    with pytest.raises(RwkvExportError, match="does not exist"):
        load_checkpoint("/nonexistent/model.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_truncated_files(tmp_path: Path, random_ckpt: Path, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    save_checkpoint(load_checkpoint(random_ckpt), full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(RwkvExportError, match="truncated|not a readable"):
        load_checkpoint(cut)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(RwkvExportError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)


def test_quantized_rwkvcpp_refused(tmp_path: Path) -> None:
    header = struct.pack("<6i", 0x67676D66, 101, 4, 2, 1, 0)
    record = struct.pack("<3i2i", 2, 10, 9, 2, 4) + b"emb.weight"
    path = tmp_path / "q.bin"
    path.write_bytes(header + record + b"\0" * 64)
    with pytest.raises(RwkvExportError, match="quantized.*Q8_0"):
        load_checkpoint(path)


def test_unknown_key(tmp_path: Path, random_ckpt: Path) -> None:
    weights = dict(load_checkpoint(random_ckpt).weights)
    weights["blocks.0.att.bogus"] = torch.zeros(3)
    torch.save(weights, tmp_path / "bad.pth")
    with pytest.raises(RwkvExportError, match="unknown key 'blocks.0.att.bogus'"):
        load_checkpoint(tmp_path / "bad.pth")


def test_missing_key(tmp_path: Path, random_ckpt: Path) -> None:
    weights = dict(load_checkpoint(random_ckpt).weights)
    del weights["blocks.1.att.time_first"]
    torch.save(weights, tmp_path / "bad.pth")
    with pytest.raises(RwkvExportError, match="'blocks.1.att.time_first' is missing"):
        load_checkpoint(tmp_path / "bad.pth")


def test_mismatched_shape(tmp_path: Path, random_ckpt: Path) -> None:
    weights = dict(load_checkpoint(random_ckpt).weights)
    weights["blocks.2.ffn.value.weight"] = torch.zeros(64, 100)
    torch.save(weights, tmp_path / "bad.pth")
    with pytest.raises(RwkvExportError, match=r"'blocks.2.ffn.value.weight' has shape \[64, 100\], expected \[64, 256\]"):
        load_checkpoint(tmp_path / "bad.pth")


def test_non_rwkv_state_dict(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(RwkvExportError, match="not an RWKV checkpoint"):
        load_checkpoint(tmp_path / "other.pth")


def test_hf_dir_other_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "rwkv6"}')
    with pytest.raises(RwkvExportError, match="RWKV-6 checkpoint"):
        load_checkpoint(tmp_path)
