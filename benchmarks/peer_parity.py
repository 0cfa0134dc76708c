"""Parity of the reference model against the independent PyPI implementations, per dtype.

    python benchmarks/peer_parity.py [--tiny ../shared/models/rwkv-cpp-tiny/tiny-rwkv-4v0-660K-FP32.bin]

For random RWKV-4 checkpoints of a few shapes (and the tiny trained model when given), prints the max
abs / relative logit error after a 64-token prompt of: the `rwkv` package (cpu fp32) and transformers'
RwkvForCausalLM against our float64 reference, and our float32 / float16 / bfloat16 reference against
float64. Relative = max abs / max |float64 logit|. The figures behind the closing notes of issue 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rwkv_export.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from rwkv_export.model import build_model, initial_state  # noqa: E402
from tests import oracles  # noqa: E402
from tests.conftest import make_checkpoint  # noqa: E402


def _logits(path: Path, tokens: torch.Tensor, dtype: str) -> np.ndarray:
    ckpt = load_checkpoint(path)
    model = build_model(ckpt, dtype)
    state = initial_state(ckpt.config, tokens.shape[0], model.state_dtype)
    with torch.no_grad():
        return model.forward_sequence(tokens, state)[0].double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=Path, default=None, help="an RWKV-4 checkpoint to add (e.g. the rwkv.cpp tiny model)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="peer-parity-"))
    cases = [
        ("random 4x64 v97", make_checkpoint(tmp / "a.pth", 4, 64, 97, seed=4)),
        ("random 7x96 v300", make_checkpoint(tmp / "b.pth", 7, 96, 300, seed=7)),
    ]
    if args.tiny is not None:
        save_checkpoint(load_checkpoint(args.tiny), tmp / "tiny.pth")
        cases.append((args.tiny.stem, tmp / "tiny.pth"))
    print(f"{'checkpoint':24s} {'implementation':22s} {'max abs':>9s} {'relative':>9s}  argmax")
    for name, path in cases:
        vocab = load_checkpoint(path).config.vocab_size
        tokens = torch.randint(0, vocab, (1, 64), generator=torch.Generator().manual_seed(0))
        ref = _logits(path, tokens, "float64")[0]
        hf = tmp / f"{path.stem}-hf"
        save_checkpoint(load_checkpoint(path), hf, "hf")
        rows = {
            "rwkv package fp32": oracles.rwkv_package(path, tokens[0].tolist())[0],
            "transformers fp32": oracles.transformers_model(hf, tokens)[0][0],
        }
        for dtype in ("float32", "float16", "bfloat16"):
            rows[f"ours {dtype}"] = _logits(path, tokens, dtype)[0]
        for impl, got in rows.items():
            diff = np.abs(got.astype(np.float64) - ref).max()
            same = "same" if got.argmax() == ref.argmax() else "DIFFERS"
            print(f"{name:24s} {impl:22s} {diff:9.2e} {diff / np.abs(ref).max():9.2e}  {same}")


if __name__ == "__main__":
    main()
