"""Stage 5, bench: speed and memory of every backend on the same weights, against peers and limits.

    workspace.py  the model's files in every format a backend reads (cached)
    backends.py   torch reference, ORT float32/float16, TensorRT, the `rwkv` package, transformers
    limits.py     measured bandwidth and sgemm rate -> step floor and prefill ceiling
    stats.py      medians, spreads, interleaved repetitions
    suite.py      one run: load, check, time, measure memory (memory.py: a fresh process each)
    report.py     figures, ratios, targets, the table and the JSON form
    scaling.py    `--scaling`: prefill time and memory as T grows
    paper.py      `--paper N`: generation time and memory over tokens, RWKV vs GPT-NeoX
Driven by `rwkv-export bench` (cli/bench_cmd.py). Nothing here is imported by the earlier stages.
"""
