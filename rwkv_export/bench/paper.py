"""`bench --paper N`: the RWKV paper's inference experiment, reproduced on this machine.

The paper plots cumulative time and memory while generating tokens 1..N: RWKV's cost per token is
flat (a fixed-size state), a Transformer's grows with the context (its KV cache and attention over
it). Here: the exported RWKV (ONNX Runtime float32 step graph) beside transformers' GPT-NeoX of the
same shape (layers, width, vocab, 4x FFN, Pythia's rotary and head size) with random weights and
the KV cache on, both greedy from one token. Each model runs in its own fresh process; the memory
figure is the running maximum of the process's resident set, sampled after every token.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from rwkv_export.bench.child import model_summary, run_child
from rwkv_export.bench.workspace import Workspace
from rwkv_export.checkpoint import ModelConfig

MODELS = ("rwkv-onnx", "gpt-neox")


def _neox(config: ModelConfig, n_tokens: int, threads: int):  # type: ignore[no-untyped-def]
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    shape: dict[str, Any] = {  # Pythia's choices: head size 64, a quarter of each head rotary, untied head
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": max(1, config.n_embd // 64),
        "intermediate_size": config.ffn_size,
        "max_position_embeddings": max(2048, n_tokens + 1),
        "rotary_pct": 0.25,
        "use_cache": True,
        "tie_word_embeddings": False,
    }
    cfg = GPTNeoXConfig(**shape)
    model = GPTNeoXForCausalLM(cfg).eval()
    past = None

    def step(token: int) -> int:
        nonlocal past
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        return int(out.logits[0, -1].argmax())

    return step, sum(p.numel() for p in model.parameters())


def _rwkv(ws: Workspace, threads: int):  # type: ignore[no-untyped-def]
    import numpy as np

    from rwkv_export.manifest import Manifest
    from rwkv_export.runtime import OrtRunner

    # The step graph alone (ExportedModel would also open prefill.onnx, a second copy of the
    # weights that generation from one token never uses and the Transformer does not pay for).
    manifest = Manifest.read(ws.onnx_dir("float32"))
    graph = manifest.graph("step")
    runner = OrtRunner(manifest.path(graph.file), "cpu", threads, graph=graph, vocab_size=manifest.model.vocab_size).__enter__()
    state = manifest.initial_state(1)
    outputs = {s.name: s.output for s in manifest.state}

    def step(token: int) -> int:
        nonlocal state
        out = runner.infer({"tokens": np.array([token], dtype=np.int64), **state})
        state = {name: out[output] for name, output in outputs.items()}
        return int(out["logits"][0].argmax())

    return step, manifest.model.parameters


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate spec['tokens'] tokens with one model; cumulative seconds and peak MB after each."""
    from rwkv_export.bench.memory import _rss_mb

    config = ModelConfig.from_dict(spec["config"])
    if spec["model"] == "gpt-neox":
        step, params = _neox(config, spec["tokens"], spec["threads"])
    else:
        step, params = _rwkv(Workspace.from_dict(spec["workspace"]), spec["threads"])
    token, elapsed, peak = 0, 0.0, _rss_mb()
    cumulative, memory = [], []
    for _ in range(spec["tokens"]):
        start = time.perf_counter()
        token = step(token)
        elapsed += time.perf_counter() - start
        peak = max(peak, _rss_mb())  # sampled outside the timed region
        cumulative.append(elapsed)
        memory.append(peak)
    return {"parameters": params, "cumulative_s": cumulative, "peak_mb": memory}


def run(
    ws: Workspace, config: ModelConfig, n_tokens: int, threads: int, progress: Callable[[str], None] = lambda m: None
) -> dict[str, Any]:
    series: dict[str, Any] = {}
    for model in MODELS:
        progress(f"paper: generating {n_tokens} tokens with {model} (fresh process)")
        spec = {"model": model, "workspace": ws.to_dict(), "config": config.to_dict(), "tokens": n_tokens, "threads": threads}
        series[model] = run_child("rwkv_export.bench.paper", spec)[1]
    return {
        "kind": "paper",
        "tokens": n_tokens,
        "threads": threads,
        "model": model_summary(ws, config),
        "series": series,
    }


def checkpoints(n: int) -> list[int]:
    """Token counts for the table rows: powers of two up to n, and n."""
    rows, k = [], 1
    while k < n:
        rows.append(k)
        k *= 2
    return rows + [n]


def format_table(result: dict[str, Any]) -> str:
    m, series = result["model"], result["series"]
    ok = [name for name in MODELS if "error" not in series[name]]
    head = ", ".join(f"{n} {series[n]['parameters'] / 1e6:.1f}M parameters" for n in ok)
    out = [
        f"Generation, tokens 1..{result['tokens']} greedy from one token, {result['threads']} threads, "
        f"RWKV-{m.get('version', '4')} {m['n_layer']} x {m['n_embd']}, vocab {m['vocab_size']} ({head})",
        "  cumulative seconds, ms for the last token (mean over the rows since the previous one), peak resident MB",
        "  " + f"{'tokens':>7} | " + " | ".join(f"{n + ' s':>12} {'ms/tok':>7} {'MB':>6}" for n in ok),
    ]
    prev = 0
    for k in checkpoints(result["tokens"]):
        cols = []
        for n in ok:
            cum = series[n]["cumulative_s"]
            per = 1e3 * (cum[k - 1] - (cum[prev - 1] if prev else 0.0)) / (k - prev)
            cols.append(f"{cum[k - 1]:12.3f} {per:7.1f} {series[n]['peak_mb'][k - 1]:6.0f}")
        out.append(f"  {k:>7} | " + " | ".join(cols))
        prev = k
    out += [f"  {n}: error: {series[n]['error']}" for n in MODELS if n not in ok]
    return "\n".join(out)


def plot(result: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for name in MODELS:
        s = result["series"][name]
        if "error" in s:
            continue
        xs = range(1, len(s["cumulative_s"]) + 1)
        ax_t.plot(xs, s["cumulative_s"], label=name)
        ax_m.plot(xs, s["peak_mb"], label=name)
    ax_t.set_ylabel("cumulative generation time (s)")
    ax_m.set_ylabel("peak resident memory (MB)")
    ax_m.set_ylim(bottom=0)
    for ax in (ax_t, ax_m):
        ax.set_xlabel("tokens generated")
        ax.grid(True, alpha=0.3)
        ax.legend()
    m = result["model"]
    fig.suptitle(f"Generation on this CPU: RWKV-{m.get('version', '4')} (ONNX Runtime) vs GPT-NeoX, {m['n_layer']} x {m['n_embd']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    print(json.dumps(child(json.loads(sys.argv[1]))))
