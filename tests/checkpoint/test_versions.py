"""The version registry (rwkv_export/versions/) and the typed ModelConfig agree with the code they describe."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rwkv_export.checkpoint import Checkpoint
from rwkv_export.checkpoint.config import ModelConfig
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.checkpoint.versions import infer_config
from rwkv_export.errors import RwkvExportError
from rwkv_export.model import build_model, initial_state, model_class
from rwkv_export.ops.wkv4 import PP_INIT
from rwkv_export.versions import KNOWN_VERSIONS, VERSIONS, detect_version, state_shapes, version_info
from rwkv_export.versions import PP_INIT as REGISTRY_PP_INIT


@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_entry_matches_its_model_and_checkpoints(version: str) -> None:
    """Every entry names a model whose state has the registry's tensors, shapes and initial values,
    a detection rule that recognises its own random checkpoint, and the config fields it carries."""
    info = version_info(version)
    config, weights = random_weights(version, 2, 32, 41, seed=1)
    assert detect_version(weights) == version
    assert infer_config(weights, "random") == config
    assert {f for f in info.config_fields if getattr(config, f) is None} == set(), f"RWKV-{version}: unset field"
    assert set(config.to_dict()["extra"]) == set(info.config_fields)
    model = build_model(Checkpoint(config, weights, "random", None), "float64")  # type: ignore[arg-type]
    assert type(model) is model_class(version) and model.WKV.__name__ == info.op.lower()
    state = model.initial_state(3)
    assert type(state)._fields == info.state_names
    for (name, shape), tensor in zip(state_shapes(config, 3).items(), state):
        assert tuple(tensor.shape) == shape and bool((tensor == torch.tensor(info.state_initial[name], dtype=tensor.dtype)).all())
    assert (
        model.rescale_every == 0
        and build_model(Checkpoint(config, weights, "r", None), "float16").rescale_every == info.float16_rescale_every
    )  # type: ignore[arg-type]
    assert model.eps == info.group_norm_eps


def test_registry_facts_match_the_ops_and_loaders() -> None:
    assert REGISTRY_PP_INIT == PP_INIT
    assert [v for v, i in VERSIONS.items() if i.transformers_class] == ["4"]
    assert version_info("5.1").default_group_norm_eps("rwkvcpp-fp16") == 1e-5 == version_info("5.2").default_group_norm_eps("rwkvcpp")
    assert version_info("5.2").default_group_norm_eps("pth") == 64e-5 and version_info("4").default_group_norm_eps("pth") is None
    with pytest.raises(RwkvExportError, match="unknown RWKV version '8'.*4, 5.1, 5.2, 6, 7"):
        version_info("8")
    assert initial_state(random_weights("4", 1, 8, 5)[0], 2).pp.max().item() == pytest.approx(-1e38, rel=1e-6)


def test_a_model_class_refuses_another_versions_config() -> None:
    config, weights = random_weights("6", 1, 16, 11)
    with pytest.raises(RwkvExportError, match=r"RWKV5 runs RWKV-5\.1/5\.2, not RWKV-6"):
        model_class("5.2")(config, weights)
    config, weights = random_weights("4", 1, 16, 11)
    with pytest.raises(RwkvExportError, match="RWKV-4 has no GroupNorm"):
        model_class("4")(config, weights, group_norm_eps=1e-5)


@pytest.mark.parametrize("version", KNOWN_VERSIONS)
def test_config_serialises_as_before(version: str) -> None:
    """to_dict keeps the historical layout (base fields + 'extra' with the version's facts); from_dict inverts it."""
    config = random_weights(version, 2, 32, 41)[0]
    data = config.to_dict()
    assert list(data) == ["version", "n_layer", "n_embd", "vocab_size", "ffn_size", "dtype", "extra"]
    assert ModelConfig.from_dict(data) == config
    if version == "7":
        assert list(data["extra"]) == ["n_head", "head_size", "lora_decay", "lora_a", "lora_v", "lora_gate", "group_norm_eps"]
    if version == "4":
        assert data["extra"] == {}


def test_config_from_dict_refuses_unknown_fields() -> None:
    data = random_weights("5.2", 1, 16, 11)[0].to_dict()
    with pytest.raises(RwkvExportError, match="unknown or repeated field 'heads'"):
        ModelConfig.from_dict({**data, "extra": {**data["extra"], "heads": 2}})
    with pytest.raises(RwkvExportError, match="unknown or repeated field 'n_head'"):
        ModelConfig.from_dict({**data, "n_head": 2})
    with pytest.raises(RwkvExportError, match="has no heads"):
        _ = random_weights("4", 1, 16, 11)[0].heads


def test_registry_imports_neither_torch_nor_onnx() -> None:
    code = "import sys, rwkv_export.versions; print(sorted(m for m in ('torch', 'onnx', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
