"""Whole reference models on a GPU, per RWKV version: WKV through the torch loop that defines each op
(custom_ops/) against WKV through the project's CUDA kernels (plugins/torch_cuda.py use_kernels),
everything else identical. 169M-like shape: 12 layers x 768, head size 64 (v5+), random weights.

    python benchmarks/bench_model_gpu.py [--versions 4,5.2,6,7] [--dtypes float32,float16] [--prompt 512] [--json out.json]
    python benchmarks/bench_model_gpu.py --device cpu --layers 2 --embd 128 --prompt 16   # a smoke run without a GPU

One row per (version, dtype): prefill tok/s (B = 1, T = --prompt) and step ms/token for both WKV
paths, the speed-ups, and the max |logit| difference between them relative to max |logit|.
Needs a CUDA GPU; exits 2 without.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rwkv_export.checkpoint import Checkpoint  # noqa: E402
from rwkv_export.checkpoint.random import random_weights  # noqa: E402
from rwkv_export.kernels.torch_cuda import use_kernels  # noqa: E402
from rwkv_export.model import build_model  # noqa: E402

VOCAB = {"4": 50277}  # v5+: the world vocabulary
STEPS = 32


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], Any], reps: int, device: str) -> float:
    """Median seconds of `fn` (synchronised), after one warm-up."""
    fn()
    _sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def bench_one(version: str, dtype: str, prompt: int, reps: int, device: str = "cuda", layers: int = 12, embd: int = 768) -> dict[str, Any]:
    config, weights = random_weights(version, layers, embd, VOCAB.get(version, 65536), head_size=64, lora=64, seed=0)
    model = build_model(Checkpoint(config=config, weights=weights, format="random", path=Path("random")), dtype).to(device)
    tokens = torch.randint(0, config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0)).to(device)

    def _state(batch: int):  # type: ignore[no-untyped-def]
        s = model.initial_state(batch)
        return type(s)(*(t.to(device) for t in s))

    row: dict[str, Any] = {"version": version, "dtype": dtype, "prompt": prompt}
    logits = {}
    for path in ("torch", "kernels"):
        if path == "kernels":
            use_kernels(model)
        with torch.no_grad():
            pre = _time(lambda: model.forward_sequence(tokens, _state(1)), reps, device)
            logits[path], state = model.forward_sequence(tokens, _state(1))

            def steps() -> None:
                s = state
                for i in range(STEPS):
                    _, s = model.forward_step(tokens[:, i], s)

            step = _time(steps, max(1, reps // 2), device) / STEPS
        row[f"{path}_prefill_tok_s"] = prompt / pre
        row[f"{path}_step_ms"] = step * 1e3
    row["prefill_speedup"] = row["kernels_prefill_tok_s"] / row["torch_prefill_tok_s"]
    row["step_speedup"] = row["torch_step_ms"] / row["kernels_step_ms"]
    ref = logits["torch"].double()
    row["logits_rel_diff"] = float((logits["kernels"].double() - ref).abs().max() / ref.abs().max())
    del weights  # the model goes with this frame (a `del model` here reads as unbound to the closures above)
    torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default="4,5.2,6,7")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a smoke run (both paths are the torch loop)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=768)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_model_gpu: no CUDA GPU visible to torch; nothing to time", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name}  {args.layers} x {args.embd}, B = 1, prompt {args.prompt}, step = mean of {STEPS}")
    print(
        f"{'version':>7} {'dtype':>8} | {'prefill tok/s torch':>19} {'kernels':>9} {'x':>6} | {'step ms torch':>13} {'kernels':>8} {'x':>5} | {'logit diff':>10}"
    )
    rows = []
    for version in args.versions.split(","):
        for dtype in args.dtypes.split(","):
            r = bench_one(version, dtype, args.prompt, args.reps, args.device, args.layers, args.embd)
            rows.append(r)
            print(
                f"{version:>7} {dtype:>8} | {r['torch_prefill_tok_s']:19.0f} {r['kernels_prefill_tok_s']:9.0f} {r['prefill_speedup']:6.1f} | "
                f"{r['torch_step_ms']:13.3f} {r['kernels_step_ms']:8.3f} {r['step_speedup']:5.2f} | {r['logits_rel_diff']:10.2e}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
