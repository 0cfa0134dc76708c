#!/usr/bin/env python
"""Fuzz the checkpoint loaders: mutated .pth, .safetensors, HF directories and rwkv.cpp FP32/FP16 files.

Bases are random checkpoints of every RWKV version (float32, float16, bfloat16 where the format has
them) and the shared tiny rwkv.cpp models when ../shared holds them. Each case is one seeded
mutation (tests/checkpoint/_checkpoint_mutations.py) loaded by `load_checkpoint` in a watchdog process (per-case
timeout, RLIMIT_AS); a sample also goes through `rwkv-export info` in its own process. Prints issue
16's table: clean error / crash (traceback) / hang / accepted with NaN/Inf weights, plus the
harmless mutations that still load as a finite model.

    nice -n 10 python scripts/fuzz_checkpoints.py --per-format 1100
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.checkpoint import _checkpoint_mutations as mut  # noqa: E402  (after the sys.path line)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (mut.MEMORY_LIMIT, mut.MEMORY_LIMIT))


def cli_outcome(path: str, timeout: float) -> tuple[str, str]:
    """`rwkv-export info PATH` in its own process: clean (exit 2, one 'error:' line), accepted (exit 0), crash, hang."""
    cmd = [sys.executable, "-c", "from rwkv_export.cli import main; main()", "info", path]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=_limited, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    except subprocess.TimeoutExpired:
        return "hang", f"no exit in {timeout:.0f} s"
    lines = proc.stderr.splitlines()
    if proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "clean", lines[0]
    tail = " | ".join(lines[-3:])[:300]
    return ("accepted" if proc.returncode == 0 and not lines else "crash"), f"exit {proc.returncode}: {tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-format", type=int, default=1100, help="mutated cases per format")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds before a case counts as a hang")
    parser.add_argument("--cli-every", type=int, default=50, help="also run `rwkv-export info` on every N-th case (0: never)")
    parser.add_argument(
        "--cli-startup",
        type=float,
        default=100.0,
        help="seconds added to --timeout for the CLI's interpreter start (torch import; minutes on a loaded machine)",
    )
    parser.add_argument("--formats", default=",".join(mut.FORMATS))
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "models" / "rwkv-cpp-tiny")
    args = parser.parse_args()
    formats = tuple(f for f in args.formats.split(",") if f)
    cli: dict[str, collections.Counter[str]] = {f: collections.Counter() for f in formats}
    mismatches: list[str] = []
    counter = iter(range(10**9))

    def on_case(fmt: str, answer: dict[str, str]) -> None:
        n = next(counter)
        if args.cli_every and n % args.cli_every == 0:
            got, detail = cli_outcome(answer["path"], args.timeout + args.cli_startup)
            cli[fmt][got] += 1
            if got != answer["outcome"]:
                mismatches.append(f"{fmt} {answer['kind']}: in-process {answer['outcome']}, CLI {got} ({detail})")
        if answer["outcome"] not in ("clean", "accepted"):
            print(f"  {fmt} {answer['kind']} ({answer['base']}): {answer['outcome']}: {answer['detail'][:160]}", file=sys.stderr)

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="rwkv-fuzz-") as tmp:
        bases = mut.make_bases(
            Path(tmp), args.shared if args.shared.is_dir() else None, dtypes=(torch.float32, torch.float16, torch.bfloat16)
        )
        counts = {f: len(b) for f, b in bases.items()}
        print(f"bases per format: {counts}; shared tiny models: {'yes' if args.shared.is_dir() else 'absent'}", file=sys.stderr)
        results = mut.run_cases(Path(tmp), bases, args.per_format, args.seed, args.timeout, formats, on_case)
    print(
        f"\n{args.per_format} cases per format, seed {args.seed}, hang = no answer in {args.timeout:.0f} s, "
        f"memory limit {mut.MEMORY_LIMIT >> 30} GiB, {time.time() - start:.0f} s\n"
    )
    print(
        f"| format | clean error | crash (traceback) | hang > {args.timeout:.0f}s | accepted with NaN/Inf weights | loads as a finite model | "
        "CLI sample (clean/accepted/other) |"
    )
    print("|---|---|---|---|---|---|---|")
    for fmt in formats:
        c = collections.Counter(r["outcome"] for r in results[fmt])
        other = sum(v for k, v in cli[fmt].items() if k not in ("clean", "accepted"))
        print(
            f"| {mut.LABELS[fmt]} | {c['clean']} | {c['crash']} | {c['hang']} | {c['nonfinite']} | {c['accepted']} | "
            f"{cli[fmt]['clean']}/{cli[fmt]['accepted']}/{other} |"
        )
    kinds = collections.Counter(r["kind"] for rows in results.values() for r in rows)
    print(f"\nmutation kinds: {dict(sorted(kinds.items()))}")
    if mismatches:
        print(f"CLI and in-process outcomes differ in {len(mismatches)} case(s):", *mismatches[:10], sep="\n  ")
    bad = sum(1 for rows in results.values() for r in rows if r["outcome"] not in ("clean", "accepted"))
    return 1 if bad or mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
