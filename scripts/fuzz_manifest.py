"""Fuzz an export's manifest.json (and the files it names) through `run`, `verify` and `build`.

    python scripts/fuzz_manifest.py [--cases 300] [--seed 0] [--timeout 20]

Makes one small RWKV-4 export (2 x 32, vocab 256), then for each seeded mutation (a field deleted,
retyped or nulled, an unknown field, a file name escaping the directory, a huge / zero / negative
dim, NaN / Inf values, an initial file holding NaN, a changed sha256 or graph file, an empty graph,
truncated or garbage bytes, non-UTF-8, 100,000-deep nesting, a FIFO or a link out) calls the three
verbs in this process (click's CliRunner, a SIGALRM watchdog) and classifies each call:

    clean      exit 2 and exactly one line on stderr ("error: ..."), no traceback
    traceback  an exception escaped (or a traceback was printed)
    hang       the watchdog fired
    accepted   exit 0 on a mutation that must be refused (silently accepted)
    unclean    anything else (exit 1, several lines, ...)

Deleting an optional field (source, versions, hint, ...) is a valid manifest: those cases must
either run (exit 0) or fail cleanly; they are counted under "benign ok". `build` never starts a
TensorRT build here: reaching the builder counts as "accepted". tests/runtime/test_manifest_fuzz.py runs
a smaller sample of the same cases.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTIONAL = {"source", "dynamic_dims", "versions", "tokenizer", "hint", "wkv_function_sha256", "wkv_op", "engines"}
KINDS = (
    "delete",
    "retype",
    "null",
    "unknown-field",
    "path-escape",
    "dim",
    "non-finite",
    "nan-initial-file",
    "sha256",
    "graph-file-changed",
    "empty",
    "truncate",
    "garbage",
    "non-utf8",
    "deep-nesting",
    "special-file",
)


@dataclass
class Case:
    kind: str
    label: str
    apply: Callable[[Path], None]  # writes the mutation into the export directory
    benign: bool = False  # a valid manifest (an optional field deleted): exit 0 is right


@dataclass
class Tally:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def add(self, kind: str, outcome: str) -> None:
        self.counts.setdefault(kind, {}).setdefault(outcome, 0)
        self.counts[kind][outcome] += 1


# --- the base export ---------------------------------------------------------------------------


def make_export(root: Path) -> tuple[Path, Path]:
    """(checkpoint, export directory) of a 2 x 32, vocab-256 random RWKV-4."""
    from rwkv_export.checkpoint import Checkpoint, save_checkpoint
    from rwkv_export.checkpoint.random import random_weights
    from rwkv_export.export import export_checkpoint

    config, weights = random_weights("4", 2, 32, 256, seed=11)
    ckpt = root / "fuzz-2x32.pth"
    save_checkpoint(Checkpoint(config, weights, "random", ckpt), ckpt)
    export_checkpoint(ckpt, root / "pristine")
    return ckpt, root / "pristine"


# --- mutations -----------------------------------------------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    _get(out, path[:-1])[path[-1]] = value
    return out


def _delete(doc: Any, path: tuple[Any, ...]) -> Any:
    out = copy.deepcopy(doc)
    del _get(out, path[:-1])[path[-1]]
    return out


def _writer(data: Any, raw: bool = False) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        (d / "manifest.json").write_bytes(data if raw else json.dumps(data).encode())

    return apply


def _other_type(value: Any, rng: random.Random) -> Any:
    options = [12345, "text", [1, "x"], {"k": 1}, True, 3.5, -7]
    return rng.choice([o for o in options if type(o) is not type(value)])


def _label(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def field_cases(doc: Any, rng: random.Random, n: int) -> list[Case]:
    """delete / retype / null / unknown-field on random fields."""
    paths = list(_paths(doc))
    dict_paths = [p for p in paths if isinstance(p[-1], str)]
    containers = [()] + [p for p in paths if isinstance(_get(doc, p), dict)]
    cases = []
    for _ in range(n):
        kind = rng.choice(("delete", "retype", "null", "unknown-field"))
        if kind == "delete":
            p = rng.choice(dict_paths)
            benign = p[-1] in OPTIONAL or p[0] == "versions"
            cases.append(Case(kind, f"delete {_label(p)}", _writer(_delete(doc, p)), benign))
        elif kind == "retype":
            p = rng.choice(paths)
            cases.append(Case(kind, f"retype {_label(p)}", _writer(_set(doc, p, _other_type(_get(doc, p), rng)))))
        elif kind == "null":
            p = rng.choice(paths)
            cases.append(Case(kind, f"null {_label(p)}", _writer(_set(doc, p, None)), _get(doc, p) is None))
        else:
            p = rng.choice(containers)
            cases.append(Case(kind, f"unknown field in {_label(p) or 'top level'}", _writer(_set(doc, (*p, "surprise"), 1))))
    return cases


def file_name_cases(doc: Any, directory: Path) -> list[Case]:
    spots = [("graphs", "prefill", "file"), ("graphs", "step", "file"), ("graphs", "step", "external_data"), ("tokenizer", "file")]
    names = [
        "../other/prefill.onnx",
        str(directory / "step.onnx"),
        "/etc/passwd",
        "sub/../../step.onnx",
        "~/step.onnx",
        "",
        None,
        7,
        "a\\..\\..\\b",
    ]
    cases = []
    for spot in spots:
        for name in names:
            value = [name] if spot[-1] == "external_data" else name
            mutated = _set(doc, spot, value)
            if spot[-1] == "external_data" and isinstance(name, str) and name:
                mutated["graphs"]["step"]["sha256"][name] = "0" * 64
            cases.append(Case("path-escape", f"{_label(spot)} = {name!r}", _writer(mutated), mutated == doc))
    return cases


def value_cases(doc: Any) -> list[Case]:
    cases = []
    state_dims = [("state", i, "shape", j) for i in range(len(doc["state"])) for j in (0, 2)]
    spec_dims = [("graphs", "prefill", "inputs", 1, "shape", 0), ("graphs", "step", "outputs", 0, "shape", 1)]
    for p in (*state_dims[:4], *spec_dims):
        for value in (2**40, 10**12, 0, -1, _get(doc, p) + 1):
            mutated = _set(doc, p, value)
            if p[0] == "state":  # the same dim in every graph, so only the size is wrong
                for g in ("prefill", "step"):
                    mutated["graphs"][g]["inputs"][p[1] + 1]["shape"][p[3]] = value
            cases.append(Case("dim", f"{_label(p)} = {value}", _writer(mutated)))
    text = json.dumps(doc)
    for literal in ("NaN", "Infinity", "-Infinity", "1e999"):
        cases.append(
            Case(
                "non-finite",
                f"state[3].initial = {literal}",
                _writer(text.replace('"initial": -1e+38', f'"initial": {literal}', 1).encode(), raw=True),
            )
        )
    cases.append(Case("empty", "graphs = {}", _writer(_set(doc, ("graphs",), {}))))
    for g in ("prefill", "step"):
        for part in ("inputs", "outputs"):
            cases.append(Case("empty", f"graphs.{g}.{part} = []", _writer(_set(doc, ("graphs", g, part), []))))
    cases.append(Case("empty", "state = []", _writer(_set(doc, ("state",), []))))
    return cases


def file_cases(doc: Any, rng: random.Random) -> list[Case]:
    cases = []
    for g in ("prefill", "step"):
        name = doc["graphs"][g]["file"]
        digest = doc["graphs"][g]["sha256"][name]
        flipped = ("1" if digest[0] != "1" else "2") + digest[1:]
        cases.append(Case("sha256", f"graphs.{g}.sha256 one digit off", _writer(_set(doc, ("graphs", g, "sha256", name), flipped))))

        def change(d: Path, name: str = name) -> None:
            data = bytearray((d / name).read_bytes())
            data[len(data) // 2] ^= 0x01
            (d / name).write_bytes(bytes(data))

        cases.append(Case("graph-file-changed", f"{name}: one bit flipped", change))

    def nan_initial(d: Path) -> None:
        import numpy as np

        from rwkv_export.fileio import sha256_file

        value = np.zeros(_get(doc, ("state", 0, "shape"))[:1] + [1] + doc["state"][0]["shape"][2:], np.float32)
        value.flat[3] = np.nan
        np.save(d / "initial_x_att.npy", value)
        mutated = copy.deepcopy(doc)
        for spec in (mutated["state"][0], mutated["graphs"]["prefill"]["inputs"][1], mutated["graphs"]["step"]["inputs"][1]):
            spec["initial_file"] = "initial_x_att.npy"
        mutated["state"][0]["initial_sha256"] = sha256_file(d / "initial_x_att.npy")
        _writer(mutated)(d)

    cases.append(Case("nan-initial-file", "state[0].initial_file holds a NaN", nan_initial))
    return cases


def byte_cases(text: bytes, rng: random.Random, n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        cut = rng.randrange(1, len(text) - 1)
        cases.append(Case("truncate", f"cut at byte {cut}", _writer(text[:cut], raw=True)))
    for _ in range(max(1, n // 3)):
        garbage = bytes(rng.randrange(256) for _ in range(rng.choice((1, 64, 4096))))
        cases.append(Case("garbage", f"{len(garbage)} random bytes", _writer(garbage, raw=True)))
        at = rng.randrange(len(text))
        cases.append(Case("non-utf8", f"0xff at byte {at}", _writer(text[:at] + b"\xff" + text[at + 1 :], raw=True)))
    cases.append(Case("deep-nesting", "100,000 nested lists", _writer(b"[" * 100_000 + b"]" * 100_000, raw=True)))
    cases.append(
        Case(
            "deep-nesting",
            "model nested 100,000 deep",
            _writer(text.replace(b'"model": {', b'"model": ' + b'{"a": ' * 100_000 + b"{", 1) + b"}" * 100_000, raw=True),
        )
    )
    return cases


def special_cases(doc: Any) -> list[Case]:
    def fifo_graph(d: Path) -> None:
        (d / "step.onnx").unlink()
        os.mkfifo(d / "step.onnx")

    def fifo_manifest(d: Path) -> None:
        (d / "manifest.json").unlink()
        os.mkfifo(d / "manifest.json")

    def link_out(d: Path) -> None:
        outside = d.parent / "outside.onnx"
        shutil.copyfile(d / "step.onnx", outside)
        (d / "step.onnx").unlink()
        (d / "step.onnx").symlink_to(outside)

    def dir_manifest(d: Path) -> None:
        (d / "manifest.json").unlink()
        (d / "manifest.json").mkdir()

    return [
        Case("special-file", "step.onnx is a FIFO", fifo_graph),
        Case("special-file", "manifest.json is a FIFO", fifo_manifest),
        Case("special-file", "step.onnx links outside the directory", link_out),
        Case("special-file", "manifest.json is a directory", dir_manifest),
    ]


def optional_cases(doc: Any) -> list[Case]:
    """Each optional field deleted: still a valid manifest (older exports lack some of them)."""
    spots = [("source",), ("dynamic_dims",), ("versions",), ("tokenizer",), ("export", "wkv_function_sha256"), ("export", "wkv_op")]
    return [Case("delete", f"delete optional {_label(p)}", _writer(_delete(doc, p)), benign=True) for p in spots]


def all_cases(pristine: Path, n: int, seed: int) -> list[Case]:
    """About n cases: every fixed kind once, the random kinds filling the rest."""
    rng = random.Random(seed)
    text = (pristine / "manifest.json").read_bytes()
    doc = json.loads(text)
    fixed = [*file_name_cases(doc, pristine), *value_cases(doc), *file_cases(doc, rng), *special_cases(doc), *optional_cases(doc)]
    n_bytes = max(4, (n - len(fixed)) // 5)
    fixed += byte_cases(text, rng, n_bytes)
    return fixed + field_cases(doc, rng, max(0, n - len(fixed)))


# --- running -------------------------------------------------------------------------------------


class Hang(Exception):
    pass


class BuildStarted(Exception):
    pass


@contextlib.contextmanager
def watchdog(seconds: int) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise Hang

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def verbs(directory: Path, ckpt: Path, benign: bool) -> dict[str, list[str]]:
    out = {"run": ["run", str(directory), "--tokens", "1,2,3", "--max-tokens", "2", "--temperature", "0", "--ids", "-q"]}
    if not benign:  # a valid manifest would run the whole scenario / a TensorRT build: not what is tested here
        out["verify"] = [
            "verify",
            str(directory),
            "--checkpoint",
            str(ckpt),
            "--backends",
            "ort-cpu-float32",
            "--seq",
            "2",
            "--steps",
            "1",
            "-q",
        ]
        out["build"] = ["build", str(directory), "--target", "tensorrt-rtx", "--max-batch", "1", "--max-seq", "4", "-q"]
    return out


def classify(args: list[str], timeout: int) -> tuple[str, str, float]:
    """(outcome, detail, seconds) of one CLI call."""
    from click.testing import CliRunner

    from rwkv_export.cli import cli

    start = time.perf_counter()
    try:
        with watchdog(timeout):
            result = CliRunner().invoke(cli, args)
    except Hang:
        return "hang", f"over {timeout} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    exc = result.exception
    if isinstance(exc, Hang):
        return "hang", f"over {timeout} s", seconds
    if isinstance(exc, BuildStarted):
        return "accepted", "reached the TensorRT builder", seconds
    if exc is not None and not isinstance(exc, SystemExit) or "Traceback" in result.output:
        return "traceback", f"{type(exc).__name__}: {str(exc)[:120]}", seconds
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"):
        return "clean", lines[0], seconds
    if result.exit_code == 0:
        return "accepted", "exit 0", seconds
    return "unclean", f"exit {result.exit_code}: {' | '.join(lines)[:200]}", seconds


def reset(work: Path, pristine: Path) -> None:
    if work.exists() or work.is_symlink():
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            work.unlink()
    shutil.copytree(pristine, work)
    outside = work.parent / "outside.onnx"
    if outside.exists():
        outside.unlink()


def run_cases(cases: list[Case], pristine: Path, ckpt: Path, timeout: int, progress: Callable[[str], None] = lambda m: None) -> Tally:
    from rwkv_export import engine

    def refuse_build(*args: Any, **kw: Any) -> Any:
        raise BuildStarted

    tally = Tally()
    work = pristine.parent / "work"
    saved, engine.build_graph = engine.build_graph, refuse_build
    try:
        for i, case in enumerate(cases):
            for verb, args in verbs(work, ckpt, case.benign).items():
                reset(work, pristine)
                case.apply(work)
                outcome, detail, seconds = classify(args, timeout)
                tally.slowest = max(tally.slowest, seconds)
                if case.benign and outcome in ("accepted", "clean"):
                    outcome = "benign ok"
                tally.add(case.kind, outcome)
                if outcome not in ("clean", "benign ok"):
                    tally.bad.append(f"{verb} [{case.kind}] {case.label}: {outcome}: {detail}")
            progress(f"{i + 1}/{len(cases)}")
    finally:
        engine.build_graph = saved
    return tally


def table(tally: Tally) -> str:
    cols = ("clean", "traceback", "hang", "accepted", "unclean", "benign ok")
    rows = [f"| kind | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
    total = dict.fromkeys(cols, 0)
    for kind in KINDS:
        counts = tally.counts.get(kind, {})
        rows.append(f"| {kind} | {' | '.join(str(counts.get(c, 0)) for c in cols)} |")
        for c in cols:
            total[c] += counts.get(c, 0)
    rows.append(f"| **all calls** | {' | '.join(str(total[c]) for c in cols)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=20, help="seconds before a call counts as a hang")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rwkv-fuzz-manifest-") as tmp:
        os.environ["RWKV_EXPORT_CACHE"] = str(Path(tmp) / "cache")
        ckpt, pristine = make_export(Path(tmp))
        cases = all_cases(pristine, args.cases, args.seed)
        start = time.perf_counter()
        tally = run_cases(cases, pristine, ckpt, args.timeout, lambda m: print(m, end="\r", file=sys.stderr))
    print(
        f"{len(cases)} mutated manifests (seed {args.seed}), "
        f"{sum(sum(c.values()) for c in tally.counts.values())} CLI calls in {time.perf_counter() - start:.1f} s, "
        f"slowest call {tally.slowest:.2f} s\n"
    )
    print(table(tally))
    for line in tally.bad:
        print(line)
    return 1 if tally.bad else 0


if __name__ == "__main__":
    sys.exit(main())
