"""Checkpoint stage: every format loads to the same tensors; bad input is one clear error."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from rwkv_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rwkv_export.checkpoint.random import random_v4_weights
from rwkv_export.errors import RwkvExportError
from rwkv_export.model import build_model, initial_state
from tests.conftest import requires_shared, tiny_model


def _logits(ckpt: Checkpoint, tokens: list[int]) -> torch.Tensor:
    model = build_model(ckpt, "float64")
    state = initial_state(ckpt.config.n_layer, 1, ckpt.config.n_embd, torch.float64)
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
        config, weights = random_v4_weights(2, 32, 50, seed=3, dtype=dtype)
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
def test_later_versions_are_refused_by_name(stem: str, version: str) -> None:
    with pytest.raises(RwkvExportError, match=rf"RWKV-{version} checkpoint"):
        load_checkpoint(tiny_model(stem))


def test_v5_pth_is_refused_by_name(tmp_path: Path, random_ckpt: Path) -> None:
    weights = dict(load_checkpoint(random_ckpt).weights)
    weights["blocks.0.att.ln_x.weight"] = torch.ones(64)
    weights["blocks.0.att.gate.weight"] = torch.ones(64, 64)
    torch.save(weights, tmp_path / "v5.pth")
    with pytest.raises(RwkvExportError, match=r"RWKV-5\.2 checkpoint"):
        load_checkpoint(tmp_path / "v5.pth")


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
