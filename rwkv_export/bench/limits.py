"""The machine's limits, measured in the same run as the backends, and what they bound.

- Memory bandwidth: a step at batch 1 reads every weight once per token (of the embedding, one
  row), so `weight bytes per token / bandwidth` is the lowest possible step time. The probe sums a
  buffer far larger than the caches with torch on the benchmark's threads (a read stream, as a
  matrix-vector product is) and copies one with numpy; the best rate seen is the bandwidth, which
  makes the floor a true lower bound.
- Matmul throughput: prefill is matrix-matrix products, 2 FLOP per weight per token (the head runs
  once per sequence: the prefill graph returns the last position's logits), so
  `sgemm FLOP/s / FLOP per token` is the highest possible prefill tok/s (the WKV recurrence is
  left out: O(C) per token for RWKV-4, O(C x head size) for 5/6/7, a few % of the matrices at
  head size 64; so the ceiling is slightly optimistic for 5/6/7). The probe runs float32
  GEMMs on the model's own shapes and on 1024^3 with torch, numpy and ONNX Runtime (MLAS) on the
  benchmark's threads; the best rate is the ceiling.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rwkv_export.checkpoint import ModelConfig
from rwkv_export.checkpoint.versions import expected_shapes


@dataclass
class Limits:
    bandwidth_gbs: float  # best read bandwidth seen, GB/s (1e9 bytes)
    bandwidth_probes: dict[str, float]
    matmul_gflops: float  # best float32 GEMM rate seen, GFLOP/s
    matmul_probes: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _best_seconds(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # first touch: page faults and lazy kernel choice are not bandwidth
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(nbytes: int = 1 << 29, reps: int = 5) -> dict[str, float]:
    """GB/s of a torch sum (reads nbytes) and a numpy copy (reads and writes nbytes each)."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32)
    probes = {"torch_sum_read": nbytes / _best_seconds(lambda: src.sum(), reps) / 1e9}
    a = src.numpy()
    b = np.empty_like(a)
    probes["numpy_copy_read_write"] = 2 * nbytes / _best_seconds(lambda: np.copyto(b, a), reps) / 1e9
    return probes


def measure_matmul(shapes: list[tuple[int, int, int]], reps: int = 5, threads: int | None = None) -> dict[str, float]:
    """GFLOP/s of float32 [M, K] @ [K, N] per (M, K, N), with torch, numpy and ONNX Runtime."""
    threads = threads or torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    probes: dict[str, float] = {}
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=g)
        b = torch.randn(k, n, generator=g)
        flop = 2.0 * m * k * n
        probes[f"torch_{m}x{k}x{n}"] = flop / _best_seconds(lambda: torch.mm(a, b), reps) / 1e9
        an, bn = a.numpy(), b.numpy()
        probes[f"numpy_{m}x{k}x{n}"] = flop / _best_seconds(lambda: an @ bn, reps) / 1e9
        run = _ort_matmul(bn, threads)
        if run is not None:
            probes[f"onnxruntime_{m}x{k}x{n}"] = flop / _best_seconds(lambda: run(an), reps) / 1e9
    return probes


def _ort_matmul(b: np.ndarray, threads: int):  # type: ignore[no-untyped-def]
    """ONNX Runtime's own sgemm (MLAS) on [M, K] @ b, as a callable; None without onnxruntime.

    Part of the ceiling because the exported graphs run on it: were it faster than torch's and
    numpy's BLAS, a ceiling without it would not bound what ORT can reach.
    """
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "sgemm_probe",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", b.shape[0]])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["m", b.shape[1]])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"a": a})


def measure_limits(config: ModelConfig, quick: bool = False, threads: int | None = None) -> Limits:
    """Both probes; `quick` shrinks them (tests, tiny models) at the cost of a lower ceiling."""
    bandwidth = measure_bandwidth(nbytes=(1 << 25) if quick else (1 << 29), reps=3 if quick else 5)
    tokens = 64 if quick else 512
    shapes = [(tokens, config.n_embd, config.ffn_size), (tokens, config.ffn_size, config.n_embd)]
    if not quick:
        shapes.append((1024, 1024, 1024))
    matmul = measure_matmul(shapes, reps=3 if quick else 5, threads=threads)
    return Limits(max(bandwidth.values()), bandwidth, max(matmul.values()), matmul)


# --- what the limits bound ---------------------------------------------------------------------
# Counted from the version's key/shape table (versions.expected_shapes), so every version is priced
# by its own weights: RWKV-5.2/6 add a gate matrix, 6/7 LoRA pairs, 7 drops the FFN receptance.

# Per-layer tensors multiplied by activations (matrix products), besides every 2-D `*.weight`:
# the LoRA pairs of v6 (mix, decay) and v7 (decay w, in-context rate a, value residual v, gate g).
LORA_NAMES = frozenset({"time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2", "w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2"})


def _is_matrix(key: str, shape: tuple[int, ...]) -> bool:
    name = key.rsplit(".", 1)[-1]
    return (key.endswith(".weight") and len(shape) == 2) or name in LORA_NAMES


def block_matrix_params(config: ModelConfig) -> int:
    """Weights of every layer's matrices (RWKV-4: 4 C^2 attention + C^2 + 2 C F channel mixing per layer)."""
    required, _ = expected_shapes(config)
    return sum(math.prod(shape) for key, shape in required.items() if key.startswith("blocks.") and _is_matrix(key, shape))


def step_weight_bytes(config: ModelConfig, bytes_per_weight: int) -> int:
    """Bytes a batch-1 step must read: every weight of the checkpoint but the embedding table, of which one row."""
    required, _ = expected_shapes(config)
    total = sum(math.prod(shape) for shape in required.values())
    return (total - config.vocab_size * config.n_embd + config.n_embd) * bytes_per_weight


def quantized_step_weight_bytes(export_dir: Path, config: ModelConfig) -> int:
    """Bytes a batch-1 step of a weight-quantized export reads: its step graph's stored weights (quantized
    blocks, scales, zero points, the float tensors its policy keeps) less the embedding table but one row."""
    from rwkv_export.manifest import read_manifest

    step = read_manifest(export_dir)["export"]["quantization"]["graphs"]["step"]
    table = int(step.get("embedding_bytes", config.vocab_size * config.n_embd * 4))
    return int(step["weight_bytes"]) - table + table // config.vocab_size


def prefill_flop(config: ModelConfig, batch: int, seq: int) -> float:
    """Matrix FLOP of one prefill call (last-position logits only); elementwise work and WKV excluded."""
    per_token = 2.0 * block_matrix_params(config)
    head = 2.0 * config.vocab_size * config.n_embd
    return batch * (seq * per_token + head)


def step_floor_seconds(config: ModelConfig, limits: Limits, bytes_per_weight: int = 4) -> float:
    return step_weight_bytes(config, bytes_per_weight) / (limits.bandwidth_gbs * 1e9)


def prefill_ceiling_tok_s(config: ModelConfig, limits: Limits, batch: int, seq: int) -> float:
    return batch * seq * limits.matmul_gflops * 1e9 / prefill_flop(config, batch, seq)
