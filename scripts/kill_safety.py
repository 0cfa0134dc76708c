#!/usr/bin/env python
"""SIGKILL `rwkv-export export` and `build` at random moments; count what the target holds afterwards.

Modes: export to a new target; export --force over an existing export; build (TensorRT-RTX, on the
CPU) into an export; build over engines built before with other options. Each trial kills the
command's process group at a uniform moment in [0, 1.1 x a complete run]. The target must end
absent, the old complete export or the new complete one (tests/cli/_kill_safety.py says how each is
recognised), never "mixed"; the temporary siblings the killed runs leave must be gone after the
next complete run.

    nice -n 10 python scripts/kill_safety.py --trials 20
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rwkv_export.kernels import trt_compat  # noqa: E402  (after the sys.path line)
from tests.cli import _kill_safety as ks  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="killed runs per mode")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--modes", default="", help="comma-separated prefixes of mode names (default: all)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rtx = "tensorrt-rtx" in trt_compat.available_targets()
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="rwkv-kill-") as tmp:
        root = Path(tmp)
        modes = ks.setup(root, rtx)
        wanted = [m for m in args.modes.split(",") if m]
        rows = []
        for title, mode in modes.items():
            if wanted and not any(title.startswith(w) for w in wanted):
                continue
            counts = ks.trials(mode, root / "target", root, args.trials, rng, say=lambda m: print(m, file=sys.stderr, flush=True))
            rows.append((title, counts))
    print(
        f"\n{args.trials} SIGKILLed runs per mode, seed {args.seed}, {time.time() - start:.0f} s"
        f"{'' if rtx else ' (TensorRT-RTX absent: no build modes)'}\n"
    )
    print(
        "| mode | killed | target absent | old complete | new complete | mixed | trials ending with a stale sibling (this or an earlier killed run) | siblings after the next complete run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for title, c in rows:
        print(
            f"| {title} | {c.get('killed', 0)} | {c.get('absent', 0)} | {c.get('old', 0)} | {c.get('new', 0)} | {c.get('mixed', 0)} "
            f"| {c.get('left siblings', 0)} | {c.get('siblings after next run', 0)} |"
        )
    return 1 if any(c.get("mixed", 0) or c.get("siblings after next run", 0) for _, c in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
