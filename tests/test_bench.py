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
        "limits": {"bandwidth_gbs": 10.0, "matmul_gflops": 60.0, "step_floor_ms": {"float32": 50.0, "float16": 25.0},
                   "prefill_ceiling_tok_s": {"1x512": 400.0}},
        "backends": {
            "torch": {"status": "ok", "weight_dtype": "float32", "prefill": {"1x512": cell(2.0)}, "step": {"1": step(0.080)},
                      "memory": {"peak_mb": 1500.0, "delta_mb": 1000.0, "batch": 1, "seq": 512, "steps": 4}},
            "ort-fp32": {"status": "ok", "weight_dtype": "float32", "prefill": {"1x512": cell(1.6)}, "step": {"1": step(0.060)},
                         "memory": {"peak_mb": 1800.0, "delta_mb": 1500.0, "batch": 1, "seq": 512, "steps": 4}},
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
    args = ["bench", "--shape", "2x64x97", "--cache-dir", str(tmp_path / "cache"), "--backends", ",".join(REQUESTED),
            "--seq", "16", "--batch", "1,2", "--reps", "3", "--step-reps", "3", "--steps", "2", "--threads", "2", "--quick-limits",
            "--json", str(out), "-q"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Targets:" in result.output
    data = json.loads(out.read_text())
    assert data["schema"] == "rwkv-export-bench/1"
    assert set(data) >= {"machine", "model", "settings", "limits", "backends", "targets"}
    assert set(data["backends"]) == set(REQUESTED)
    assert data["limits"]["bandwidth_gbs"] > 0 and data["limits"]["matmul_gflops"] > 0
    for name in ("ort-int8", "tensorrt"):  # no quantized export; no GPU here (a GPU machine has no engines in tmp)
        assert data["backends"][name]["status"] == "skipped" and data["backends"][name]["reason"]
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
