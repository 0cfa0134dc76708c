"""TensorRT engines on a GPU: the WKV4 plugin and whole models against the references.

Needs a CUDA GPU, cuda-python and a TensorRT that can run there: standard TensorRT (any GPU), or
TensorRT-RTX on an SM it targets (sm75/80/86/89/120/121: not Hopper). Each test skips with the
reason otherwise, so CPU CI reports them as skipped, never as passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from rwkv_export import engine
from rwkv_export.fileio import sha256_file
from rwkv_export.kernels import trt_compat
from rwkv_export.manifest import ExportOptions, Graph, Manifest, ModelInfo, TensorSpec
from rwkv_export.ops import wkv4 as op
from tests.conftest import make_checkpoint

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]
RTX_SMS = {(7, 5), (8, 0), (8, 6), (8, 9), (12, 0), (12, 1)}


def _gpu_sm() -> tuple[int, int] | None:
    try:
        from cuda.bindings import runtime
    except ImportError:
        return None
    err, count = runtime.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return None
    err, props = runtime.cudaGetDeviceProperties(0)
    return (int(props.major), int(props.minor)) if int(err) == 0 else None


def _choose_target() -> tuple[str | None, str]:
    """(target, why not): standard TensorRT runs anywhere; TensorRT-RTX only on the SMs it builds for."""
    sm = _gpu_sm()
    if sm is None:
        return None, "needs a CUDA GPU and cuda-python (none visible)"
    found = trt_compat.available_targets()
    if "tensorrt" in found:
        return "tensorrt", ""
    if "tensorrt-rtx" in found and sm in RTX_SMS:
        return "tensorrt-rtx", ""
    if "tensorrt-rtx" in found:
        return None, f"TensorRT-RTX does not target this GPU (sm{sm[0]}{sm[1]}); install standard TensorRT"
    return None, "needs TensorRT: pip install 'rwkv-export[tensorrt]' or standard TensorRT"


TARGET, WHY_NOT = _choose_target()
requires_engine_gpu = pytest.mark.skipif(TARGET is None, reason=WHY_NOT or "no usable TensorRT + GPU")
C = 40  # not a multiple of 4 and not of the block size: exercises the kernels' tails


def _plugin_only_dir(tmp_path: Path, plugin: str) -> Path:
    """A model dir holding one WKV4 node (C fixed, B and T dynamic) with a manifest that `build` reads."""
    from rwkv_export.ops.onnx_function import wkv_model

    model = wkv_model("WKV4")
    rename = {"B": "batch", "T": "seq"}
    for value in (*model.graph.input, *model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "C":
                dim.dim_value = C
            elif dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    onnx.save(model, str(tmp_path / "wkv4.onnx"))

    def spec(v: Any) -> TensorSpec:
        dims = tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
        return TensorSpec(v.name, "float32", dims, "data")

    graph = Graph(
        "wkv4.onnx",
        18,
        1,
        (),
        {"wkv4.onnx": sha256_file(tmp_path / "wkv4.onnx")},
        tuple(spec(v) for v in model.graph.input),
        tuple(spec(v) for v in model.graph.output),
    )
    Manifest(
        model=ModelInfo("4", 1, C, 1, 1, 0),
        dtype="float32",
        graphs={"wkv4": graph},
        state=(),
        export=ExportOptions("float32", 18, False, "scan", 0, "rwkv", "rwkv", "1"),
    ).write(tmp_path)
    engine.build(tmp_path, engine.BuildOptions(target=TARGET, max_batch=4, max_seq=64, plugin=plugin), graphs=("wkv4",))
    return tmp_path


def _wkv_case(batch: int, seq: int, seed: int, fresh_state: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {
        "time_decay": rng.normal(-1.0, 1.0, C),
        "time_first": rng.normal(0.0, 1.0, C),
        "k": rng.normal(0.0, 8.0, (batch, seq, C)),
        "v": rng.normal(0.0, 1.0, (batch, seq, C)),
    }
    if fresh_state:
        aa, bb, pp = op.initial_wkv_state_numpy(batch, C)
    else:
        bb = rng.uniform(0.1, 3.0, (batch, C))
        aa, pp = bb * rng.uniform(-1, 1, (batch, C)), rng.normal(0, 3, (batch, C))
    return {k: np.asarray(v, np.float32) for k, v in {**feeds, "aa": aa, "bb": bb, "pp": pp}.items()}


@requires_engine_gpu
@pytest.mark.parametrize(
    "plugin",
    [
        "python",
        pytest.param("aot", marks=pytest.mark.skipif(TARGET != "tensorrt", reason="AOT plugins exist in standard TensorRT >= 10.9 only")),
    ],
)
def test_plugin_engine_matches_numpy_reference(tmp_path: Path, plugin: str) -> None:
    from rwkv_export.runtime.tensorrt_runner import TensorRTRunner

    model_dir = _plugin_only_dir(tmp_path, plugin)
    with TensorRTRunner(model_dir, "wkv4") as runner:
        for batch, seq, seed, fresh in ((1, 1, 0, True), (2, 7, 1, False), (4, 64, 2, True), (3, 33, 3, False)):
            feeds = _wkv_case(batch, seq, seed, fresh)
            got = runner.infer(feeds)
            want = op.wkv4_numpy(*(feeds[n] for n in op.INPUTS))
            for name, ref in zip(op.OUTPUTS, want):
                diff = float(np.max(np.abs(got[name] - ref)))
                assert np.allclose(got[name], ref, rtol=1e-5, atol=1e-5), (
                    f"{TARGET}/{plugin} {name} B={batch} T={seq}: max |diff| {diff:.3g}"
                )


@pytest.fixture(scope="module")
def built_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if TARGET is None:
        pytest.skip(reason=WHY_NOT)
    from rwkv_export.export import export_checkpoint

    root = tmp_path_factory.mktemp("trt-gpu")
    export_checkpoint(make_checkpoint(root / "r.pth", layers=3, embd=64, vocab=97), root / "model", force=True)
    engine.build(root / "model", engine.BuildOptions(target=TARGET, max_batch=4, max_seq=64))
    return root / "model"


def _reference(model_dir: Path) -> Any:
    from rwkv_export.checkpoint import load_checkpoint
    from rwkv_export.model import build_model

    return build_model(load_checkpoint(model_dir.parent / "r.pth"))


@requires_engine_gpu
def test_model_engines_match_the_torch_reference(built_model: Path) -> None:
    from rwkv_export.model.state import ChannelState, initial_state
    from rwkv_export.runtime.tensorrt_runner import TensorRTRunner

    model, names = _reference(built_model), ChannelState._fields
    tokens = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_logits, ref_state = model.forward_sequence(tokens, initial_state(model.config, 2))
        ref_step_logits, ref_step_state = model.forward_step(tokens[:, 0], ref_state)
    state = {n: t.numpy() for n, t in zip(names, initial_state(model.config, 2))}
    with TensorRTRunner(built_model, "prefill") as prefill, TensorRTRunner(built_model, "step") as step:
        out = prefill.infer({"tokens": tokens.numpy(), **state})
        np.testing.assert_allclose(out["logits"], ref_logits.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"{TARGET} prefill logits")
        for n, ref in zip(names, ref_state):
            np.testing.assert_allclose(out[f"{n}_out"], ref.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"{TARGET} prefill {n}")
        fed = {n: out[f"{n}_out"] for n in names}
        out = step.infer({"tokens": tokens[:, 0].numpy(), **fed})
        np.testing.assert_allclose(out["logits"], ref_step_logits.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"{TARGET} step logits")
        for n, ref in zip(names, ref_step_state):
            np.testing.assert_allclose(out[f"{n}_out"], ref.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"{TARGET} step {n}")


@requires_engine_gpu
def test_device_resident_state_equals_host_state(built_model: Path) -> None:
    from rwkv_export.model.state import ChannelState, initial_state
    from rwkv_export.runtime.tensorrt_runner import DeviceState, TensorRTRunner

    manifest = Manifest.read(built_model)
    tokens = np.random.default_rng(1).integers(0, 97, (1, 9))
    host = {n: t.numpy() for n, t in zip(ChannelState._fields, initial_state(_reference(built_model).config, 1))}
    device = DeviceState.initial_for(manifest, batch=1)
    with (
        TensorRTRunner(built_model, "prefill") as p_host,
        TensorRTRunner(built_model, "step") as s_host,
        TensorRTRunner(built_model, "prefill", state=device) as p_dev,
        TensorRTRunner(built_model, "step", state=device) as s_dev,
    ):
        out_h, out_d = p_host.infer({"tokens": tokens, **host}), p_dev.infer({"tokens": tokens})
        assert set(out_d) == {"logits"}  # the state stayed on the device
        np.testing.assert_array_equal(out_d["logits"], out_h["logits"])
        for t in range(5):
            host = {n: out_h[f"{n}_out"] for n in ChannelState._fields}
            token = np.array([t], np.int64)
            out_h, out_d = s_host.infer({"tokens": token, **host}), s_dev.infer({"tokens": token})
            np.testing.assert_array_equal(out_d["logits"], out_h["logits"], err_msg=f"step {t}")
        final = device.to_host()
        for n in ChannelState._fields:
            np.testing.assert_array_equal(final[n], out_h[f"{n}_out"], err_msg=n)
    device.free()


@requires_engine_gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch for the standalone enqueue check")
def test_enqueue_standalone_on_a_torch_stream() -> None:
    """The class-based plugin's enqueue without an engine: TensorRT-shaped descriptors, torch memory."""
    from rwkv_export.kernels import trt_plugin

    trt = trt_compat.load(TARGET)
    plugin_cls, _ = trt_plugin.plugin_classes(trt, "WKV4")
    plugin = plugin_cls("auto", trt_plugin.kernel_sha256("WKV4"))
    feeds = _wkv_case(2, 17, 5, False)
    inputs = [torch.from_numpy(feeds[n]).cuda() for n in op.INPUTS]
    outputs = [torch.empty_like(inputs[2]), *(torch.empty_like(inputs[4]) for _ in range(3))]

    def desc(t: torch.Tensor) -> Any:
        d = trt.PluginTensorDesc()
        d.dims, d.type, d.format = trt.Dims(list(t.shape)), trt.DataType.FLOAT, trt.TensorFormat.LINEAR
        return d

    stream = torch.cuda.Stream()
    plugin.enqueue(
        [desc(t) for t in inputs],
        [desc(t) for t in outputs],
        [t.data_ptr() for t in inputs],
        [t.data_ptr() for t in outputs],
        0,
        stream.cuda_stream,
    )
    stream.synchronize()
    want = op.wkv4_numpy(*(feeds[n] for n in op.INPUTS))
    for name, got, ref in zip(op.OUTPUTS, outputs, want):
        assert np.allclose(got.cpu().numpy(), ref, rtol=1e-5, atol=1e-5), name
