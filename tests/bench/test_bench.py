"""`rwkv-export bench`: statistics and report arithmetic on known numbers, one tiny end-to-end run.

No timing thresholds: the machine is shared and noisy; the tests check what is computed from the
timings and that every requested backend yields finite figures (or a stated reason it did not run).
"""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from rwkv_export.bench.report import finalize, format_table
from rwkv_export.bench.stats import interleaved, quantile, round_robin_order, summarize
from rwkv_export.bench.workspace import random_workspace
from rwkv_export.cli import cli

# --- stats ----------------------------------------------------------------------------------------


def test_quantiles_interpolate_like_numpy() -> None:
    xs = [7.0, 1.0, 3.0, 5.0]  # sorted: 1 3 5 7
    assert quantile(xs, 0.5) == 4.0
    assert quantile(xs, 0.25) == 2.5
    assert quantile(xs, 0.75) == 5.5
    assert quantile([2.0], 0.25) == 2.0


def test_summary_of_known_samples() -> None:
    s = summarize([10.0, 12.0, 11.0, 30.0, 9.0])  # sorted: 9 10 11 12 30
    assert (s.median, s.q1, s.q3, s.min, s.max, s.n) == (11.0, 10.0, 12.0, 9.0, 30.0, 5)
    assert s.iqr == 2.0
    assert s.rel_iqr == pytest.approx(2.0 / 11.0)
    assert s.scaled(1e3).median == 11000.0
    assert s.to_dict()["iqr"] == 2.0


def test_round_robin_rotates_every_backend_through_every_position() -> None:
    names = ["a", "b", "c"]
    orders = [round_robin_order(names, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert round_robin_order(names, 4) == ["b", "c", "a"]


def test_interleaved_times_each_call_with_the_clock_and_skips_warmup() -> None:
    calls: list[str] = []
    ticks = iter(range(100))  # a fake clock: each reading is one later, so every call lasts 1
    tasks = {n: (lambda n=n: calls.append(n)) for n in ("x", "y")}
    samples = interleaved(tasks, reps=3, warmup=1, clock=lambda: float(next(ticks)))
    assert calls == ["x", "y", "x", "y", "y", "x", "x", "y"]  # warm-up, then rotated rounds
    assert samples == {"x": [1.0, 1.0, 1.0], "y": [1.0, 1.0, 1.0]}


# --- report ---------------------------------------------------------------------------------------


def _summary(median: float) -> dict[str, float]:
    return summarize([median * 0.9, median, median * 1.2]).to_dict()


def _raw() -> dict:
    cell = lambda secs: {"batch": 1, "seq": 512, "seconds": _summary(secs)}  # noqa: E731
    step = lambda secs: {"batch": 1, "steps": 4, "seconds": _summary(secs)}  # noqa: E731
    return {
        "machine": {"cpu": "test cpu", "cores": 2},
        "model": {"source": "unit", "version": "4", "n_layer": 12, "n_embd": 768, "vocab_size": 50277, "parameters": 169e6},
        "settings": {"seq": [512], "batch": [1], "steps": 4, "reps": 3, "threads": 2},
        "limits": {
            "bandwidth_gbs": 10.0,
            "matmul_gflops": 60.0,
            "step_floor_ms": {"float32": 50.0, "float16": 25.0},
            "prefill_ceiling_tok_s": {"1x512": 400.0},
        },
        "backends": {
            "torch": {
                "status": "ok",
                "weight_dtype": "float32",
                "prefill": {"1x512": cell(2.0)},
                "step": {"1": step(0.080)},
                "memory": {"peak_mb": 1500.0, "delta_mb": 1000.0, "batch": 1, "seq": 512, "steps": 4},
            },
            "ort-fp32": {
                "status": "ok",
                "weight_dtype": "float32",
                "prefill": {"1x512": cell(1.6)},
                "step": {"1": step(0.060)},
                "memory": {"peak_mb": 1800.0, "delta_mb": 1500.0, "batch": 1, "seq": 512, "steps": 4},
            },
            "ort-fp16": {"status": "ok", "weight_dtype": "float16", "prefill": {"1x512": cell(4.0)}, "step": {"1": step(0.030)}},
            "rwkv": {"status": "ok", "weight_dtype": "float32", "prefill": {"1x512": cell(1.92)}, "step": {"1": step(0.100)}},
            "ort-int8": {"status": "skipped", "reason": "no quantized export"},
        },
    }


def test_finalize_derives_rates_ratios_and_limits() -> None:
    r = finalize(_raw())
    ort, torch_, fp16 = (r["backends"][n] for n in ("ort-fp32", "torch", "ort-fp16"))
    assert ort["prefill"]["1x512"]["tok_s"] == pytest.approx(320.0)  # 512 / 1.6 s
    assert ort["prefill"]["1x512"]["vs_torch"] == pytest.approx(1.25)  # 320 / 256
    assert ort["prefill"]["1x512"]["of_ceiling"] == pytest.approx(0.8)  # 320 / 400
    assert torch_["prefill"]["1x512"]["vs_torch"] == pytest.approx(1.0)
    assert ort["step"]["1"]["ms"] == pytest.approx(60.0)
    assert ort["step"]["1"]["tok_s"] == pytest.approx(1 / 0.060)
    assert ort["step"]["1"]["vs_torch"] == pytest.approx(80 / 60)
    assert ort["step"]["1"]["x_floor"] == pytest.approx(1.2)  # 60 ms over the 50 ms float32 floor
    assert fp16["step"]["1"]["x_floor"] == pytest.approx(1.2)  # 30 ms over the 25 ms float16 floor
    assert r["schema"] == "rwkv-export-bench/1"


def test_quantized_backends_beside_float32() -> None:
    raw = _raw()
    raw["limits"]["step_floor_ms"]["int4"] = 10.0
    raw["backends"]["ort-int4"] = {
        "status": "ok",
        "weight_dtype": "int4",
        "prefill": {"1x512": {"batch": 1, "seq": 512, "seconds": _summary(1.28)}},
        "step": {"1": {"batch": 1, "steps": 4, "seconds": _summary(0.020)}},
        "parity": {"max_abs": 0.5, "max_rel": 0.02},
    }
    r = finalize(raw)
    assert r["backends"]["ort-int4"]["step"]["1"]["x_floor"] == pytest.approx(2.0)  # 20 ms over its own 10 ms floor
    text = format_table(r)
    assert "Quantized weights vs ORT float32, batch 1" in text
    assert "ort-int4      20.00    3.00     2.00            1.25     2.0e-02" in text  # 60/20 ms; 400/320 tok/s


def test_targets_met_and_missed() -> None:
    r = finalize(_raw())
    prefill, step = r["targets"]
    assert prefill["status"] == "missed" and prefill["value"] == pytest.approx(1.2)  # 320 vs 266.7 tok/s
    assert step["status"] == "missed" and step["value"] == pytest.approx(1.2)
    raw = _raw()
    raw["backends"]["ort-fp32"]["step"]["1"]["seconds"] = _summary(0.054)  # 1.08x the floor
    raw["backends"]["rwkv"]["prefill"]["1x512"]["seconds"] = _summary(3.2)  # 160 tok/s: ORT 2x
    prefill, step = finalize(raw)["targets"]
    assert (prefill["status"], step["status"]) == ("met", "met")
    assert prefill["value"] == pytest.approx(2.0) and step["value"] == pytest.approx(1.08)


def test_targets_unknown_without_the_measurements() -> None:
    raw = _raw()
    del raw["backends"]["rwkv"]
    assert [t["status"] for t in finalize(raw)["targets"]] == ["unknown", "missed"]


def test_table_shows_every_figure_and_the_target_lines() -> None:
    text = format_table(finalize(_raw()))
    assert "1x512     ort-fp32          320.0" in text
    assert "1.25" in text and "80%" in text  # x torch and % ceiling of the ORT prefill row
    assert "MISSED  ORT float32 prefill(512) >= 1.3x the rwkv package's tok/s: 1.200x (ort-fp32 320 tok/s vs rwkv 267 tok/s)" in text
    assert "MISSED  ORT float32 step <= 1.1x the bandwidth floor: 1.200x (ort-fp32 60.0 ms vs floor 50.0 ms)" in text
    assert "ort-int8: skipped: no quantized export" in text
    assert "ort-fp32          1800     1500     1.50" in text  # memory row: delta 1.5x torch's


# --- profile --------------------------------------------------------------------------------------


def test_profile_counts_control_flow_bodies_once() -> None:
    from rwkv_export.bench.profile import WKV_ROW, summarize_profile

    def kernel(name: str, op: str, ts: int, dur: int) -> dict:
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [
        kernel("node_linear", "Gemm", 0, 600),
        kernel("If_1", "If", 1000, 300),  # its body: the Scan and the Exp below run inside it
        kernel("Scan_2", "Scan", 1010, 250),
        kernel("Exp_3", "Exp", 1020, 100),
        kernel("node_mul", "Mul", 1400, 100),
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 2000},
    ]
    rows = summarize_profile(events, runs=2)
    assert [(r["op"], r["ms_per_run"], r["nodes"]) for r in rows] == [("Gemm", 0.3, 1), (WKV_ROW, 0.15, 1), ("Mul", 0.05, 1)]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert rows[0]["share"] == pytest.approx(0.6)


# --- end to end -----------------------------------------------------------------------------------


REQUESTED = ["torch", "ort-fp32", "rwkv", "transformers", "ort-int8", "tensorrt"]


@pytest.mark.slow
def test_bench_end_to_end_on_a_tiny_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--shape",
        "2x64x97",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--backends",
        ",".join(REQUESTED),
        "--seq",
        "16",
        "--batch",
        "1,2",
        "--reps",
        "3",
        "--step-reps",
        "3",
        "--steps",
        "2",
        "--threads",
        "2",
        "--quick-limits",
        "--json",
        str(out),
        "-q",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Targets:" in result.output
    data = json.loads(out.read_text())
    assert data["schema"] == "rwkv-export-bench/1"
    assert set(data) >= {"machine", "model", "settings", "limits", "backends", "targets"}
    assert set(data["backends"]) == set(REQUESTED)
    assert data["limits"]["bandwidth_gbs"] > 0 and data["limits"]["matmul_gflops"] > 0
    for name in ("tensorrt",):  # no GPU here (a GPU machine has no engines in tmp)
        assert data["backends"][name]["status"] == "skipped" and data["backends"][name]["reason"]
    int8 = data["backends"]["ort-int8"]  # the float32 graphs with int8 weights (export --quantize int8)
    assert int8["status"] == "ok" and int8["weight_dtype"] == "int8"
    assert 1e-4 < int8["parity"]["max_rel"] < 5e-2  # really quantized, still the same model
    assert 0.2 < data["model"]["step_weight_bytes"]["int8"] / data["model"]["step_weight_bytes"]["float32"] < 0.35
    assert (
        math.isfinite(int8["step"]["1"]["x_floor"]) and data["limits"]["step_floor_ms"]["int8"] < data["limits"]["step_floor_ms"]["float32"]
    )
    assert "Quantized weights vs ORT float32" in result.output
    for name in ("torch", "ort-fp32", "rwkv", "transformers"):
        b = data["backends"][name]
        assert b["status"] == "ok", (name, b.get("reason"))
        for batch in (1, 2):
            cell = b["prefill"][f"{batch}x16"]
            if name == "rwkv" and batch == 2:
                assert "one sequence per call" in cell["skipped"]
                continue
            for figure in ("tok_s", "vs_torch", "of_ceiling"):
                assert math.isfinite(cell[figure]), (name, batch, figure, cell)
            step = b["step"][str(batch)]
            for figure in ("ms", "tok_s", "vs_torch", "x_floor"):
                assert math.isfinite(step[figure]), (name, batch, figure, step)
            assert step["seconds"]["n"] == 3
        assert b["memory"]["peak_mb"] > b["memory"]["delta_mb"] > 0, (name, b["memory"])
        assert b["parity"]["max_rel"] < 1e-4, (name, b["parity"])  # float32 everywhere: the same weights
    assert [t["status"] for t in data["targets"]] == ["unknown", data["targets"][1]["status"]]


# --- RWKV-5.2, 6, 7 -------------------------------------------------------------------------------


def test_summary_puts_ort_beside_torch_and_rwkv() -> None:
    r = finalize(_raw())
    prefill, step = r["summary"]
    assert prefill["values"] == pytest.approx({"ort-fp32": 320.0, "torch": 256.0, "rwkv": 512 / 1.92})
    assert prefill["speedup"] == pytest.approx({"torch": 1.25, "rwkv": 1.2})  # 320 / 256, 320 / 266.7
    assert step["values"] == pytest.approx({"ort-fp32": 60.0, "torch": 80.0, "rwkv": 100.0})
    assert step["speedup"] == pytest.approx({"torch": 80 / 60, "rwkv": 100 / 60})  # ms ratios: > 1 is ORT faster
    text = format_table(r)
    assert "prefill 512, tok/s        320.0      256.0      266.7      1.25      1.20" in text
    assert "step, ms/token            60.00      80.00     100.00      1.33      1.67" in text
    raw = _raw()
    del raw["backends"]["rwkv"]
    prefill, step = finalize(raw)["summary"]
    assert prefill["values"]["rwkv"] is None and prefill["speedup"]["rwkv"] is None
    assert "prefill 512, tok/s        320.0      256.0          -      1.25         -" in format_table(finalize(raw))


@pytest.mark.parametrize("version", ["4", "5.1", "5.2", "6", "7"])
def test_limits_count_each_versions_own_weights(version: str) -> None:
    """Step bytes = every weight but the embedding table (one row of it); prefill FLOP = 2 x the block
    matrices per token: checked against the tensors of a random checkpoint and, per version, by hand."""
    from rwkv_export.bench.limits import block_matrix_params, prefill_flop, step_weight_bytes
    from rwkv_export.checkpoint.random import random_weights

    L, C, V, N, R = 3, 64, 97, 16, 8
    config, weights = random_weights(version, L, C, V, head_size=N, lora=R)
    F = config.ffn_size
    assert step_weight_bytes(config, 4) == 4 * (sum(t.numel() for t in weights.values()) - V * C + C)
    assert step_weight_bytes(config, 2) * 2 == step_weight_bytes(config, 4)
    by_hand = {
        "4": L * (4 * C * C + C * C + 2 * C * F),  # k v r o; ffn r; ffn k v
        "5.1": L * (4 * C * C + C * C + 2 * C * F),
        "5.2": L * (5 * C * C + C * C + 2 * C * F),  # + gate
        "6": L * (5 * C * C + C * C + 2 * C * F + C * 5 * R + 5 * R * C + 2 * C * R),  # + mix LoRA (5 ways) + decay LoRA
        "7": L * (4 * C * C + 2 * C * F + 4 * 2 * C * R) - 2 * C * R,  # no ffn r; w a v g LoRAs; block 0 has no v LoRA
    }[version]
    assert block_matrix_params(config) == by_hand
    assert prefill_flop(config, 2, 10) == 2 * (10 * 2.0 * by_hand + 2.0 * V * C)


def _bench_args(tmp_path, out, version: str, backends: list[str], batch: str, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
    """A tiny random model of `version` (2 x 64, vocab 97, heads of 16), short repetitions, JSON to `out`."""
    return [
        "bench", "--version", version, "--shape", "2x64x97", "--head-size", "16", "--cache-dir", str(tmp_path / "cache"),
        "--backends", ",".join(backends), "--seq", "8", "--batch", batch, "--reps", "2", "--step-reps", "2", "--steps", "2",
        "--quick-limits", "--no-memory", "--json", str(out), "-q", *extra,
    ]  # fmt: skip


def _bench(tmp_path, version: str, backends: list[str], *extra: str) -> tuple[dict, str]:  # type: ignore[no-untyped-def]
    out = tmp_path / f"bench-{version}.json"
    args = _bench_args(tmp_path, out, version, backends, "1,2", *extra)
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.stdout


def _check_figures(data: dict, name: str, batches: tuple[int, ...] = (1, 2)) -> None:
    b = data["backends"][name]
    assert b["status"] == "ok", (name, b.get("reason"))
    for batch in batches:
        for figure in ("tok_s", "vs_torch", "of_ceiling"):
            assert math.isfinite(b["prefill"][f"{batch}x8"][figure]), (name, batch, figure)
        for figure in ("ms", "tok_s", "vs_torch", "x_floor"):
            assert math.isfinite(b["step"][str(batch)][figure]), (name, batch, figure)
    assert b["parity"]["max_rel"] < 1e-5, (name, b["parity"])  # float32 everywhere: the same weights, the same model


@pytest.mark.slow
@pytest.mark.parametrize("version", ["5.2", "6", "7"])
def test_bench_later_versions(tmp_path, version: str) -> None:  # type: ignore[no-untyped-def]
    """torch and ORT float32 on every later version, plus the `rwkv` package (an independent
    implementation) where it runs in this process (4/5/6: the family the tests import); transformers
    says why it cannot."""
    peer = ["rwkv"] if version != "7" else []
    data, text = _bench(tmp_path, version, ["torch", "ort-fp32", *peer, "transformers"])
    m = data["model"]
    assert (m["version"], m["n_layer"], m["n_embd"], m["vocab_size"], m["n_head"], m["head_size"]) == (version, 2, 64, 97, 4, 16)
    assert f"RWKV-{version} 2 x 64 (4 heads of 16)" in text
    for name in ("torch", "ort-fp32"):
        _check_figures(data, name)
    if peer:
        _check_figures(data, "rwkv", batches=(1,))
    t = data["backends"]["transformers"]
    assert t["status"] == "skipped" and f"RWKV-4 only; this is RWKV-{version}" in t["reason"]
    prefill, step = data["summary"]
    assert math.isfinite(prefill["speedup"]["torch"]) and math.isfinite(step["speedup"]["torch"])
    assert (prefill["speedup"]["rwkv"] is not None) == bool(peer)
    assert data["limits"]["step_floor_ms"]["float32"] > 0
    ws, _ = random_workspace(tmp_path / "cache", 2, 64, 97, version=version, head_size=16)
    assert ws.version() == version and ws.config_file.is_file()  # backends learn the version without loading weights


@pytest.mark.slow
def test_bench_rwkv7_with_the_rwkv_package_in_a_fresh_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The package runs RWKV-7 only when imported with RWKV_V7_ON=1, once per process: a fresh bench
    process imports it so; its logits agree with the torch reference's."""
    import os
    import subprocess
    import sys

    pytest.importorskip("rwkv", reason="the `rwkv` package (bench extra) is not installed")
    out = tmp_path / "bench.json"
    args = _bench_args(tmp_path, out, "7", ["torch", "ort-fp32", "rwkv"], "1")
    env = {k: v for k, v in os.environ.items() if k != "RWKV_V7_ON"}  # the bench must set it itself
    proc = subprocess.run(
        [sys.executable, "-c", "from rwkv_export.cli import main; main()", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    for name in ("torch", "ort-fp32", "rwkv"):
        _check_figures(data, name, batches=(1,))
    step = data["summary"][-1]
    assert step["figure"] == "step, ms/token" and all(math.isfinite(v) for v in step["values"].values())


def test_rwkv_package_family_is_fixed_per_process() -> None:
    """In-process (the test session imports the RWKV-4/5/6 family), RWKV-7 is unavailable with the reason."""
    pytest.importorskip("rwkv", reason="the `rwkv` package (bench extra) is not installed")
    from rwkv_export.bench.backends import BackendUnavailable, rwkv_package_class

    cls = rwkv_package_class("5.2")
    assert rwkv_package_class("6") is cls and rwkv_package_class("4") is cls
    with pytest.raises(BackendUnavailable, match="RWKV-4/5/6 only .*RWKV-7 needs a fresh process"):
        rwkv_package_class("7")


def test_bench_bad_version_input_exits_2(tmp_path, random_ckpt) -> None:  # type: ignore[no-untyped-def]
    cache = ["--cache-dir", str(tmp_path / "cache"), "--backends", "torch"]
    for args, needle in (
        (["--version", "6", "--shape", "2x60x97"], "n_embd) 60 is not a multiple of the head size 64"),
        (["--version", "7", "--shape", "2x64x97", "--head-size", "24"], "not a multiple of the head size 24"),
        (["--shape", "2x64x97", "--head-size", "16"], "--head-size applies to RWKV-5/6/7"),
        ([str(random_ckpt), "--version", "6"], "--version and --head-size describe the random model"),
    ):
        result = CliRunner().invoke(cli, ["bench", *args, *cache], catch_exceptions=False)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, lines)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir()), "nothing made for refused input"


def test_workspace_keeps_the_sources_group_norm_eps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An rwkv.cpp 5.2 file (GroupNorm eps 1e-5) benched through the workspace's model.pth, which a
    bare .pth load would read with the 5.2 release default (64e-5): the workspace keeps 1e-5."""
    from rwkv_export.bench.workspace import ensure, source_workspace
    from rwkv_export.checkpoint import load_checkpoint
    from tests.conftest import TINY, tiny_model

    if not TINY.is_dir():
        pytest.skip(f"needs the tiny trained models in {TINY}")
    ws, make = source_workspace(tmp_path, str(tiny_model("5v2-730K")))
    ckpt = ensure(ws, make, need_hf=False, dtypes=[], progress=lambda _: None)
    assert load_checkpoint(ws.pth).config.group_norm_eps == pytest.approx(64e-5)  # why the workspace must say it
    assert ckpt.config.group_norm_eps == pytest.approx(1e-5) == ws.checkpoint().config.group_norm_eps


def test_cached_export_with_an_older_function_body_is_stale(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The workspace re-exports when the manifest's WKV function fingerprint is not today's code's
    (same form name, other body), and keeps an export that matches."""
    from rwkv_export.bench.workspace import _export_is_current
    from rwkv_export.checkpoint import Checkpoint
    from rwkv_export.checkpoint.random import random_weights
    from rwkv_export.export import export_checkpoint
    from rwkv_export.export.finalize import wkv_function_sha256

    config, weights = random_weights("7", 1, 32, 41, seed=0)
    out = export_checkpoint(Checkpoint(config, weights, "random", tmp_path / "m.pth"), tmp_path / "x").directory
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["wkv_function_sha256"] == wkv_function_sha256("WKV7", manifest["export"]["opset"], "scan")
    assert _export_is_current(out, "scan") and not _export_is_current(out, "chunked")
    manifest["export"]["wkv_function_sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert not _export_is_current(out, "scan")
