"""Turn raw timings into the benchmark's figures, targets, table and JSON.

`finalize(raw)` derives every figure from the raw medians (so the unit tests can feed it numbers
and check the arithmetic), adds the ratios and the target lines, and returns the JSON form;
`format_table(result)` renders it for people. Ratios are the claim, absolute times the context:
    x torch   speed relative to the torch reference timed in the same rounds (> 1: faster)
    % ceil    prefill tok/s as a share of the matmul ceiling (limits.py)
    x floor   step time over the bandwidth floor for the backend's weight dtype (1.0 is perfect)
The summary puts the batch-1 figures of ORT float32 beside the torch reference and the `rwkv` package
(any RWKV version: the closing comparison of v4 / 5.2 / 6 / 7 is one bench run per version).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from rwkv_export.bench.backends import REFERENCE

SCHEMA = "rwkv-export-bench/1"
# The export issue's targets, on the float32 export.
PREFILL_TARGET = ("ort-fp32", "rwkv", 1, 512, 1.3)
SUMMARY = ("ort-fp32", "torch", "rwkv")  # ours first, then the peers its speed-ups are over  # ORT prefill(512) >= 1.3x the rwkv package
STEP_TARGET = ("ort-fp32", 1, 1.1)  # ORT step at batch 1 <= 1.1x the bandwidth floor


def cell_key(batch: int, seq: int) -> str:
    return f"{batch}x{seq}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def finalize(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw timings (seconds per call, as stats.Summary dicts) -> the full result with figures."""
    result = copy.deepcopy(raw)
    limits = result["limits"]
    backends = result["backends"]
    ref = backends.get(REFERENCE, {})
    for b in backends.values():
        if b.get("status") != "ok":
            continue
        for key, cell in b.get("prefill", {}).items():
            if "seconds" not in cell:
                continue
            cell["tok_s"] = cell["batch"] * cell["seq"] / cell["seconds"]["median"]
            ref_cell = ref.get("prefill", {}).get(key, {}) if ref.get("status") == "ok" else {}
            ref_tok_s = ref_cell["batch"] * ref_cell["seq"] / ref_cell["seconds"]["median"] if "seconds" in ref_cell else None
            cell["vs_torch"] = _ratio(cell["tok_s"], ref_tok_s)
            cell["of_ceiling"] = _ratio(cell["tok_s"], limits["prefill_ceiling_tok_s"].get(key))
        for key, cell in b.get("step", {}).items():
            if "seconds" not in cell:
                continue
            median = cell["seconds"]["median"]
            cell["ms"] = median * 1e3
            cell["tok_s"] = cell["batch"] / median
            ref_cell = ref.get("step", {}).get(key, {}) if ref.get("status") == "ok" else {}
            cell["vs_torch"] = _ratio(ref_cell.get("seconds", {}).get("median"), median)
            cell["x_floor"] = _ratio(cell["ms"], limits["step_floor_ms"].get(b.get("weight_dtype", "float32")))
    result["schema"] = SCHEMA
    result["summary"] = summary(result)
    result["targets"] = targets(result)
    return result


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Batch 1: prefill tok/s per T and step ms/token of SUMMARY's backends, and ours' speed-up over each peer.

    A speed-up > 1 means ORT float32 is faster (prefill: tok/s ratio; step: the inverse ms ratio).
    None where a backend did not run or did not time that figure.
    """
    backends = result["backends"]
    ours, *peers = SUMMARY

    def figure(name: str, kind: str, key: str, field: str) -> float | None:
        b = backends.get(name, {})
        return b.get(kind, {}).get(key, {}).get(field) if b.get("status") == "ok" else None

    rows = []
    if 1 in result["settings"]["batch"]:
        for seq in result["settings"]["seq"]:
            values = {n: figure(n, "prefill", cell_key(1, seq), "tok_s") for n in SUMMARY}
            rows.append(
                {
                    "figure": f"prefill {seq}, tok/s",
                    "kind": "prefill",
                    "seq": seq,
                    "values": values,
                    "speedup": {p: _ratio(values[ours], values[p]) for p in peers},
                }
            )
        values = {n: figure(n, "step", "1", "ms") for n in SUMMARY}
        rows.append(
            {
                "figure": "step, ms/token",
                "kind": "step",
                "seq": None,
                "values": values,
                "speedup": {p: _ratio(values[p], values[ours]) for p in peers},
            }
        )
    return rows


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The met / missed lines; 'unknown' where the run did not measure what a target needs."""
    backends = result["backends"]
    ours, peer, batch, seq, goal = PREFILL_TARGET
    name = f"ORT float32 prefill({seq}) >= {goal}x the rwkv package's tok/s"
    a = backends.get(ours, {}).get("prefill", {}).get(cell_key(batch, seq), {}).get("tok_s")
    b = backends.get(peer, {}).get("prefill", {}).get(cell_key(batch, seq), {}).get("tok_s")
    value = _ratio(a, b)
    lines = [
        _target(
            name,
            value,
            goal,
            value is not None and value >= goal,
            f"{ours} {a:.0f} tok/s vs {peer} {b:.0f} tok/s"
            if value is not None
            else f"needs --backends {ours},{peer} --seq {seq} --batch {batch}",
        )
    ]
    ours, batch, goal = STEP_TARGET
    name = f"ORT float32 step <= {goal}x the bandwidth floor"
    ms = backends.get(ours, {}).get("step", {}).get(str(batch), {}).get("ms")
    floor = result["limits"]["step_floor_ms"].get("float32")
    value = _ratio(ms, floor)
    lines.append(
        _target(
            name,
            value,
            goal,
            value is not None and value <= goal,
            f"{ours} {ms:.1f} ms vs floor {floor:.1f} ms" if value is not None else f"needs --backends {ours} --batch {batch}",
        )
    )
    return lines


def _target(name: str, value: float | None, goal: float, met: bool, detail: str) -> dict[str, Any]:
    status = "unknown" if value is None else ("met" if met else "missed")
    return {"name": name, "status": status, "value": value, "goal": goal, "detail": detail}


# --- the table -----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None or not math.isfinite(value) else format(value, spec)


def _spread(summary: dict[str, float]) -> str:
    med = summary["median"]
    return f"{100 * (summary['q3'] - summary['q1']) / med:4.1f}% [{100 * (summary['min'] / med - 1):+.0f}%,{100 * (summary['max'] / med - 1):+.0f}%]"


def format_table(result: dict[str, Any]) -> str:
    names = [n for n, b in result["backends"].items() if b.get("status") == "ok"]
    out = _header_lines(result) + _summary_lines(result) + _prefill_lines(result, names) + _step_lines(result, names)
    out += _memory_lines(result, names) + _parity_lines(result, names) + _quantized_lines(result)
    return "\n".join(out + _closing_lines(result))


def _header_lines(result: dict[str, Any]) -> list[str]:
    m, lim, s = result["model"], result["limits"], result["settings"]
    return [
        f"rwkv-export bench: {m['source']}: RWKV-{m['version']} {m['n_layer']} x {m['n_embd']}{_heads(m)}, vocab {m['vocab_size']}, "
        f"{m['parameters'] / 1e6:.1f}M parameters; {s['threads']} threads; repetitions interleaved across backends",
        f"machine: {result['machine']['cpu']} ({result['machine']['cores']} cores){_load(result['machine'])}",
        f"limits: read bandwidth {lim['bandwidth_gbs']:.1f} GB/s -> step floor "
        + ", ".join(f"{ms:.1f} ms ({d})" for d, ms in lim["step_floor_ms"].items())
        + f"; sgemm {lim['matmul_gflops']:.1f} GFLOP/s -> prefill ceiling "
        + ", ".join(f"{v:.0f} tok/s ({k})" for k, v in lim["prefill_ceiling_tok_s"].items()),
    ]


def _cell_lines(label: str, name: str, cell: dict[str, Any] | None, measured: str, row: Callable[[dict[str, Any]], str]) -> list[str]:
    """One backend's line for one cell: nothing if absent, its skip reason if `measured` is missing, else `row(cell)`."""
    if cell is None:
        return []
    if measured not in cell:
        return [f"  {label} {name:<13} {'skipped: ' + cell.get('skipped', '?')}"]
    return [f"  {label} {name:<13} {row(cell)}"]


def _prefill_row(cell: dict[str, Any]) -> str:
    return (
        f"{cell['tok_s']:9.1f} {_spread(cell['seconds']):>20} "
        f"{_fmt(cell['vs_torch'], '.2f'):>8} {_fmt(_pct(cell['of_ceiling']), '.0f'):>6}%"
    )


def _step_row(cell: dict[str, Any]) -> str:
    return (
        f"{cell['ms']:8.2f} {_spread(cell['seconds']):>20} {cell['tok_s']:8.1f} "
        f"{_fmt(cell['vs_torch'], '.2f'):>8} {_fmt(cell['x_floor'], '.2f'):>8}"
    )


def _prefill_lines(result: dict[str, Any], names: list[str]) -> list[str]:
    s = result["settings"]
    title = f"Prefill, tokens/s (median of {s['reps']}; spread = IQR as % of median [min, max]; x torch = speed-up over the torch reference; % ceil = share of the matmul ceiling)"
    out = ["", title, f"  {'B x T':<9} {'backend':<13} {'tok/s':>9} {'spread':>20} {'x torch':>8} {'% ceil':>7}"]
    for batch in s["batch"]:
        for seq in s["seq"]:
            key = cell_key(batch, seq)
            cells = [result["backends"][n]["prefill"].get(key) for n in names]
            if cells and all(c is not None and "tok_s" not in c for c in cells):  # one line, not one per backend
                reasons = sorted({str(c.get("skipped", "?")) for c in cells if c is not None})
                out.append(f"  {key:<9} {'(all)':<13} skipped: {'; '.join(reasons)}")
                continue
            for n in names:
                out += _cell_lines(f"{key:<9}", n, result["backends"][n]["prefill"].get(key), "tok_s", _prefill_row)
    return out


def _step_lines(result: dict[str, Any], names: list[str]) -> list[str]:
    s = result["settings"]
    title = f"Step, ms per step (median of {s.get('step_reps', s['reps'])} repetitions of {s['steps']} consecutive steps; tok/s = B / step time; x floor = step time / bandwidth floor)"
    out = ["", title, f"  {'B':<4} {'backend':<13} {'ms':>8} {'spread':>20} {'tok/s':>8} {'x torch':>8} {'x floor':>8}"]
    for batch in s["batch"]:
        for n in names:
            out += _cell_lines(f"{batch:<4}", n, result["backends"][n]["step"].get(str(batch)), "ms", _step_row)
    return out


def _closing_lines(result: dict[str, Any]) -> list[str]:
    """The backends that did not run, then the targets."""
    out = []
    skipped = [(n, b) for n, b in result["backends"].items() if b.get("status") != "ok"]
    if skipped:
        out += ["", "Not run:"] + [f"  {n}: {b['status']}: {b['reason']}" for n, b in skipped]
    return (
        out
        + ["", "Targets:"]
        + [
            f"  {t['status'].upper():<7} {t['name']}: {_fmt(t['value'], '.3f', 'n/a')}{'x' if t['value'] is not None else ''} ({t['detail']})"
            for t in result["targets"]
        ]
    )


def _heads(model: dict[str, Any]) -> str:
    return f" ({model['n_head']} heads of {model['head_size']})" if "head_size" in model else ""


def _summary_lines(result: dict[str, Any]) -> list[str]:
    rows = result.get("summary") or []
    if not rows:
        return []
    ours, *peers = SUMMARY
    out = [
        "",
        f"Summary, batch 1: {ours} beside the torch reference and the `rwkv` package (speed-up of {ours} over each; > 1: faster)",
        f"  {'figure':<20} " + " ".join(f"{n:>10}" for n in SUMMARY) + " " + " ".join(f"{'x ' + p:>9}" for p in peers),
    ]
    for row in rows:
        spec = ".1f" if row["kind"] == "prefill" else ".2f"
        out.append(
            f"  {row['figure']:<20} "
            + " ".join(f"{_fmt(row['values'][n], spec):>10}" for n in SUMMARY)
            + " "
            + " ".join(f"{_fmt(row['speedup'][p], '.2f'):>9}" for p in peers)
        )
    return out


def _load(machine: dict[str, Any]) -> str:
    load = machine.get("load_average")
    if not load:
        return ""
    busy = max(load["start"], load["end"]) > 0.5 * machine["cores"]
    return f"; 1-min load average {load['start']:.1f} at start, {load['end']:.1f} at end" + (
        " (BUSY: other work shared the cores; absolute figures are pessimistic, ratios less so)" if busy else ""
    )


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _memory_lines(result: dict[str, Any], names: list[str]) -> list[str]:
    rows = [(n, result["backends"][n].get("memory")) for n in names]
    rows = [(n, mem) for n, mem in rows if mem]
    if not rows:
        return []
    first = next((mem for _, mem in rows if "peak_mb" in mem), None)
    work = f"load + prefill {first['batch']} x {first['seq']} + {first['steps']} steps, " if first else ""
    out = [
        "",
        f"Peak resident memory, MB (a fresh process per backend: {work}delta = above the interpreter with its libraries imported)",
        f"  {'backend':<13} {'peak':>8} {'delta':>8} {'x torch':>8}",
    ]
    ref = result["backends"].get(REFERENCE, {}).get("memory", {}).get("delta_mb")
    for n, mem in rows:
        if "peak_mb" not in mem:
            out.append(f"  {n:<13} error: {mem.get('error')}")
            continue
        out.append(f"  {n:<13} {mem['peak_mb']:8.0f} {mem['delta_mb']:8.0f} {_fmt(_ratio(mem['delta_mb'], ref), '.2f'):>8}")
    return out


def _parity_lines(result: dict[str, Any], names: list[str]) -> list[str]:
    rows = [(n, result["backends"][n].get("parity")) for n in names if result["backends"][n].get("parity")]
    if not rows:
        return []
    return [
        "",
        "Same weights check: max |logits - torch logits| after a 16-token prefill (relative to max |torch logits|)",
        "  " + ", ".join(f"{n} {p['max_abs']:.1e} ({p['max_rel']:.1e})" for n, p in rows),
    ]


QUANTIZED = ("ort-int8", "ort-int4")


def _quantized_lines(result: dict[str, Any]) -> list[str]:
    """Speed and accuracy cost of the weight-quantized backends side by side, batch 1, against ORT float32."""
    backends = result["backends"]
    base = backends.get("ort-fp32", {})
    rows = [n for n in QUANTIZED if backends.get(n, {}).get("status") == "ok"]
    if not rows or base.get("status") != "ok":
        return []
    seq = max((c["seq"] for c in base["prefill"].values() if c.get("batch") == 1 and "tok_s" in c), default=None)
    key = cell_key(1, seq) if seq else None
    out = [
        "",
        f"Quantized weights vs ORT float32, batch 1 (step and prefill({seq}) speed-ups: > 1 is faster; x floor = step / "
        "the bandwidth floor of the backend's own weight bytes; logits error = the same-weights check above)",
        f"  {'backend':<10} {'step ms':>8} {'x fp32':>7} {'x floor':>8} {'prefill x fp32':>15} {'logits err':>11}",
    ]
    base_step = base["step"].get("1", {}).get("ms")
    base_prefill = base["prefill"].get(key, {}).get("tok_s") if key else None
    for n in rows:
        b = backends[n]
        step, prefill = b["step"].get("1", {}), b["prefill"].get(key, {}) if key else {}
        out.append(
            f"  {n:<10} {_fmt(step.get('ms'), '.2f'):>8} {_fmt(_ratio(base_step, step.get('ms')), '.2f'):>7} "
            f"{_fmt(step.get('x_floor'), '.2f'):>8} {_fmt(_ratio(prefill.get('tok_s'), base_prefill), '.2f'):>15} "
            f"{_fmt((b.get('parity') or {}).get('max_rel'), '.1e'):>11}"
        )
    return out
