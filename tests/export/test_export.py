"""Export: ONNX Runtime on the exported graphs against the float64 reference, and the graph contract.

Tolerances (relative to the largest |logit| / |state| of the float64 reference):
- float32: 1e-5 on logits (ORT fuses and reorders float32 ops: a few ulp per op), 1e-4 on the state
  (the float32 WKV recurrence accumulates rounding over T tokens);
- float16: 2e-2 on logits (11-bit mantissa accumulated over the layers, as the torch float16
  reference); the state stays float32 but is fed by float16 activations: 2e-2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.checkpoint.random import random_weights
from rwkv_export.export import export_checkpoint
from rwkv_export.model import ChannelState, build_model, initial_state, random_state
from rwkv_export.ops.registry import DOMAIN
from rwkv_export.ops.wkv4 import OP_TYPE
from tests.conftest import requires_shared, tiny_model

NAMES = ChannelState._fields
CFG = random_weights("4", 3, 64, 97)[0]  # the shape of conftest's random_ckpt
TOL = {"float32": 1e-5, "float16": 2e-2}
STATE_TOL_F32 = 1e-4


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, random_ckpt: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {
        "float32": export_checkpoint(random_ckpt, root / "f32", all_logits=True).directory,
        "float16": export_checkpoint(random_ckpt, root / "f16", dtype="float16", all_logits=True).directory,
    }


def _session(directory: Path, graph: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(directory / f"{graph}.onnx"), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, tokens: np.ndarray, state: ChannelState) -> tuple[np.ndarray, list[np.ndarray]]:
    out = session.run(None, {"tokens": tokens.astype(np.int64), **{n: s.float().numpy() for n, s in zip(NAMES, state)}})
    return out[0], out[1:]


def _rel(a: np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("T", [1, 7, 512])
def test_prefill_matches_reference(exports: dict[str, Path], random_ckpt: Path, dtype: str, T: int) -> None:
    model = build_model(load_checkpoint(random_ckpt), "float64")
    tokens = np.random.default_rng(T).integers(0, 97, (3, T))
    state = random_state(CFG, 3, seed=T, dtype=torch.float64)
    ref, ref_state = model.forward_sequence(torch.from_numpy(tokens), state, all_logits=True)
    logits, new_state = _run(_session(exports[dtype], "prefill"), tokens, state)
    assert logits.dtype == np.float32 and logits.shape == (3, T, 97)
    err = _rel(logits, ref.numpy())
    assert err < TOL[dtype], f"ORT {dtype} prefill T={T}: logits rel error {err:.2e}"
    for name, a, b in zip(NAMES, new_state, ref_state):
        err = _rel(a, b.numpy())
        # The state is the float32 recurrence run over T tokens: its rounding accumulates (the numpy
        # float32 loop of custom_ops/wkv4.py shows the same), hence 1e-4 as `verify` uses for state.
        assert err < (TOL[dtype] if dtype == "float16" else STATE_TOL_F32), f"ORT {dtype} T={T}: {name} rel {err:.2e}"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_prefill_equals_steps_and_split_prefill(exports: dict[str, Path], dtype: str) -> None:
    prefill, step = _session(exports[dtype], "prefill"), _session(exports[dtype], "step")
    tokens = np.random.default_rng(1).integers(0, 97, (2, 24))
    state0 = initial_state(CFG, 2)
    whole, whole_state = _run(prefill, tokens, state0)
    state = state0
    for t in range(24):
        logits, state_list = _run(step, tokens[:, t], state)
        state = ChannelState(*(torch.from_numpy(s) for s in state_list))
        assert np.abs(logits - whole[:, t]).max() < 1e-4 * np.abs(whole).max(), f"{dtype}: step {t} != prefill position {t}"
    _, mid = _run(prefill, tokens[:, :10], state0)
    part, part_state = _run(prefill, tokens[:, 10:], ChannelState(*(torch.from_numpy(s) for s in mid)))
    assert np.abs(part - whole[:, 10:]).max() < 1e-4 * np.abs(whole).max(), f"{dtype}: split prefill differs"
    for name, a, b, c in zip(NAMES, (s.numpy() for s in state), whole_state, part_state):
        scale = max(np.abs(b).max(), 1.0)
        assert np.abs(a - b).max() < 1e-4 * scale, f"{dtype}: state {name} after steps != after prefill"
        assert np.abs(c - b).max() < 1e-4 * scale, f"{dtype}: state {name} after split prefill != whole"


def test_graph_contract(exports: dict[str, Path]) -> None:
    manifest = json.loads((exports["float32"] / "manifest.json").read_text())
    for graph in ("prefill", "step"):
        model = onnx.load(exports["float32"] / f"{graph}.onnx")
        onnx.checker.check_model(model, full_check=True)
        wkv = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
        assert len(wkv) == 3, f"{graph}: {len(wkv)} WKV4 nodes, expected n_layer = 3"
        for node in wkv:
            attrs = {a.name: a.s.decode() for a in node.attribute}
            assert attrs == {"plugin_namespace": "rwkv", "plugin_version": "1"}, f"{graph}: {attrs}"
            assert len(node.input) == 7 and len(node.output) == 4
        assert [(f.domain, f.name) for f in model.functions] == [("rwkv", "WKV4")]
        assert {(o.domain, o.version) for o in model.opset_import} >= {("rwkv", 1)}
        dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        assert dims["tokens"] == (["batch", "seq"] if graph == "prefill" else ["batch"])
        assert dims["pp"] == [3, "batch", 64]
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["rwkv.version"] == "4" and meta["rwkv_export.graph"] == graph and meta["rwkv.n_layer"] == "3"
        info = manifest["graphs"][graph]
        assert [t["name"] for t in info["inputs"]] == ["tokens", *NAMES]
        assert [t["name"] for t in info["outputs"]] == ["logits", *(n + "_out" for n in NAMES)]
    assert {s["name"]: s["initial"] for s in manifest["state"]}["pp"] == -1e38
    assert manifest["model"] == {"version": "4", "n_layer": 3, "n_embd": 64, "vocab_size": 97, "ffn_size": 256, "parameters": 174528}
    assert manifest["graphs"]["step"]["sha256"]["step.onnx"] and manifest["tokenizer"]["kind"] == "none"


def test_reference_evaluator_runs_step(exports: dict[str, Path], random_ckpt: Path) -> None:
    """onnx.reference is an executor independent of ORT: it must run the file as shipped."""
    from onnx.reference import ReferenceEvaluator

    model = build_model(load_checkpoint(random_ckpt), "float64")
    state = random_state(CFG, 2, seed=5, dtype=torch.float64)
    tokens = np.array([3, 90])
    ref, ref_state = model.forward_step(torch.from_numpy(tokens), state)
    evaluator = ReferenceEvaluator(str(exports["float32"] / "step.onnx"))
    out = evaluator.run(None, {"tokens": tokens, **{n: s.float().numpy() for n, s in zip(NAMES, state)}})
    assert _rel(out[0], ref.numpy()) < 1e-5, f"ReferenceEvaluator step: logits rel {_rel(out[0], ref.numpy()):.2e}"
    assert _rel(out[2], ref_state.aa.numpy()) < 1e-5


BARE_SCRIPT = r"""
import json, sys
import numpy as np, onnxruntime as ort
d = sys.argv[1]
m = json.load(open(f"{d}/manifest.json"))
assert "rwkv_export" not in sys.modules
sess = {g: ort.InferenceSession(f"{d}/{i['file']}", providers=["CPUExecutionProvider"]) for g, i in m["graphs"].items()}
state = {s["name"]: np.full([2 if x == "batch" else x for x in s["shape"]], s["initial"], np.float32) for s in m["state"]}
tokens = np.array(json.loads(sys.argv[2]), np.int64)
out = dict(zip([o["name"] for o in m["graphs"]["prefill"]["outputs"]], sess["prefill"].run(None, {"tokens": tokens, **state})))
state = {s["name"]: out[s["output"]] for s in m["state"]}
out = dict(zip([o["name"] for o in m["graphs"]["step"]["outputs"]], sess["step"].run(None, {"tokens": tokens[:, 0], **state})))
print(json.dumps(out["logits"].tolist()))
"""


def test_bare_onnxruntime_subprocess(exports: dict[str, Path], random_ckpt: Path) -> None:
    tokens = [[5, 6, 7, 8], [9, 10, 11, 12]]
    proc = subprocess.run(
        [sys.executable, "-c", BARE_SCRIPT, str(exports["float32"]), json.dumps(tokens)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    logits = np.array(json.loads(proc.stdout))
    model = build_model(load_checkpoint(random_ckpt), "float64")
    _, state = model.forward_sequence(torch.tensor(tokens), initial_state(CFG, 2, torch.float64))
    ref, _ = model.forward_step(torch.tensor([5, 9]), state)
    assert _rel(logits, ref.numpy()) < 1e-5


@requires_shared
@pytest.mark.parametrize("precision,dtype", [("FP32", "float32"), ("FP16", "float32"), ("FP16", "float16")])
def test_tiny_trained_v4_exported(tmp_path: Path, precision: str, dtype: str) -> None:
    path = tiny_model("4v0-660K", precision)
    out = export_checkpoint(path, tmp_path / "out", dtype=dtype).directory
    model = build_model(load_checkpoint(path), "float64")
    tokens = np.array([list(b"Hello, world! RWKV is an RNN.")])
    ref, _ = model.forward_sequence(torch.from_numpy(tokens), initial_state(model.config, 1, torch.float64))
    logits, _ = _run(_session(out, "prefill"), tokens, initial_state(model.config, 1))
    err = _rel(logits, ref.numpy())
    assert err < TOL[dtype], f"tiny {precision} exported as {dtype}: logits rel {err:.2e}"
    assert logits.argmax() == ref.numpy().argmax()
    assert json.loads((out / "manifest.json").read_text())["tokenizer"]["kind"] == "bytes"


def test_external_data(tmp_path: Path, random_ckpt: Path) -> None:
    """Larger models keep their weights once, in weights.data, for both graphs; forced here with a zero threshold."""
    out = export_checkpoint(random_ckpt, tmp_path / "ext", external_data_threshold=0).directory
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"]["step"]["external_data"] == manifest["graphs"]["prefill"]["external_data"] == ["weights.data"]
    assert sorted(p.name for p in out.iterdir() if "onnx" in p.name or p.suffix == ".data") == ["prefill.onnx", "step.onnx", "weights.data"]
    assert (out / "weights.data").stat().st_size > 10 * (out / "step.onnx").stat().st_size
    logits, _ = _run(_session(out, "step"), np.array([1]), initial_state(CFG, 1))
    model = build_model(load_checkpoint(random_ckpt), "float64")
    ref, _ = model.forward_step(torch.tensor([1]), initial_state(CFG, 1, torch.float64))
    assert _rel(logits, ref.numpy()) < 1e-5


def test_chosen_opset_and_wkv_form(tmp_path: Path, random_ckpt: Path) -> None:
    """--opset 18 (the function body's minimum) with the chunked body: checker passes, same numbers."""
    out = export_checkpoint(random_ckpt, tmp_path / "o18", opset=18, wkv_form="chunked").directory
    model = onnx.load(out / "step.onnx")
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 18), ("rwkv", 1)}
    assert {o.domain: o.version for o in model.functions[0].opset_import}[""] == 18
    assert json.loads((out / "manifest.json").read_text())["export"]["wkv_form"] == "chunked"
    tokens = np.random.default_rng(3).integers(0, 97, (2, 33))
    ref_model = build_model(load_checkpoint(random_ckpt), "float64")
    ref, _ = ref_model.forward_sequence(torch.from_numpy(tokens), initial_state(CFG, 2, torch.float64))
    logits, _ = _run(_session(out, "prefill"), tokens, initial_state(CFG, 2))
    assert _rel(logits, ref.numpy()) < TOL["float32"], f"opset 18 chunked: rel {_rel(logits, ref.numpy()):.2e}"
