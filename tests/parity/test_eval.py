"""eval: perplexity, bits per byte, KL and top-1 of backends on real text, run as an RNN in chunks;
checked against one unchunked torch pass computed here, and its one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rwkv_export.checkpoint import load_checkpoint
from rwkv_export.cli import cli
from rwkv_export.errors import RwkvExportError
from rwkv_export.parity.backends import TorchBackend
from rwkv_export.parity.evaluate import evaluate, read_text, run_chunk, tokenize
from rwkv_export.tokenizer import ByteTokenizer
from tests.conftest import SHARED, requires_shared, tiny_model

TEXT = SHARED / "texts" / "tinyshakespeare.txt"
requires_text = pytest.mark.skipif(not TEXT.is_file(), reason=f"needs {TEXT} (../shared is absent in this clone)")


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _one_line_error(result, needle: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines
    assert "Traceback" not in result.output


def LastLogitsOnly(ckpt, dtype):  # type: ignore[no-untyped-def]
    """The reference as an export without --all-logits behaves: prefill returns only the last position."""
    return TorchBackend(ckpt, dtype, all_logits=False)


@requires_shared
@requires_text
def test_chunked_rnn_scores_match_one_unchunked_pass() -> None:
    """Chunks of 48 with the state carried give the perplexity of one 600-token pass computed here with
    torch's own log_softmax; the step path (no all-logits prefill) gives the same numbers."""
    from rwkv_export.model import build_model

    ckpt = load_checkpoint(tiny_model("5v2-730K"))
    text = tokenize(read_text(TEXT, 0.9, 1.0), ByteTokenizer(), 48, 600, "holdout")
    ids = torch.as_tensor(text.tokens)[None]
    model = build_model(ckpt, "float32")
    with torch.no_grad():
        logits, _ = model.forward_sequence(ids[:, :-1], model.initial_state(1), all_logits=True)
    nll = -torch.log_softmax(logits[0].double(), -1).gather(1, ids[0, 1:, None]).mean().item()
    with TorchBackend(ckpt, "float64") as ref, TorchBackend(ckpt, "float32") as f32, LastLogitsOnly(ckpt, "float32") as steps:
        rows = evaluate(ref, [f32, steps], text, 48)
    ref_row, f32_row, step_row = rows
    assert f32_row["tokens"] == ref_row["tokens"] == 599 and text.n_bytes == 599
    assert f32_row["perplexity"] == pytest.approx(math.exp(nll), rel=1e-6)
    assert f32_row["bits_per_byte"] == pytest.approx(nll / math.log(2), rel=1e-6)  # bytes tokenizer: one byte a token
    assert 3 < ref_row["bits_per_byte"] < 6  # a tiny trained model on English: well under uniform bytes (8 bits)
    assert ref_row["kl_mean"] == 0 and ref_row["top1_agreement"] == 1.0
    assert f32_row["kl_mean"] < 1e-10 and f32_row["top1_agreement"] == 1.0
    assert step_row["perplexity"] == pytest.approx(f32_row["perplexity"], rel=1e-6)
    assert step_row["kl_p99"] < 1e-10


@requires_shared
def test_run_chunk_steps_equal_the_sequence_form() -> None:
    ckpt = load_checkpoint(tiny_model("4v0-660K"))
    tokens = np.frombuffer(b"First Citizen:", dtype=np.uint8).astype(np.int64)
    with TorchBackend(ckpt, "float64") as seq, LastLogitsOnly(ckpt, "float64") as steps:
        a, sa = run_chunk(seq, tokens, seq.initial_state(1))
        b, sb = run_chunk(steps, tokens, steps.initial_state(1))
    assert a.shape == b.shape == (len(tokens), 256)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * np.abs(a).max())
    np.testing.assert_allclose(sa["aa"], sb["aa"], rtol=1e-9, atol=1e-12)


@requires_shared
@requires_text
def test_cli_table_and_json(tmp_path: Path) -> None:
    result = _invoke(
        "eval",
        str(tiny_model("4v0-660K")),
        "--text",
        str(TEXT),
        "--holdout",
        "0.1",
        "--max-tokens",
        "300",
        "--chunk",
        "100",
        "--json",
        "-q",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference"] == "torch-float64" and report["text"]["start"] == pytest.approx(0.9)
    assert [r["backend"] for r in report["rows"]] == ["torch-float64", "torch-float32"]
    assert report["rows"][1]["tokens"] == 299 and report["rows"][1]["top1_agreement"] == 1.0
    table = _invoke(
        "eval",
        str(tiny_model("4v0-660K")),
        "--text",
        str(TEXT),
        "--start",
        "0.5",
        "--end",
        "0.6",
        "--max-tokens",
        "200",
        "--chunk",
        "64",
        "-q",
    )
    assert table.exit_code == 0, table.output
    assert "torch-float32" in table.stdout and "bits/byte" in table.stdout and "[0.5, 0.6)" in table.stdout


@requires_shared
def test_bad_texts_are_one_line_errors(tmp_path: Path) -> None:
    ckpt = str(tiny_model("4v0-660K"))
    empty, latin1, short = tmp_path / "empty.txt", tmp_path / "latin1.txt", tmp_path / "short.txt"
    empty.write_bytes(b"")
    latin1.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    short.write_text("To be, or not to be")
    _one_line_error(_invoke("eval", ckpt, "--text", str(empty)), "is empty")
    _one_line_error(_invoke("eval", ckpt, "--text", str(latin1)), "is not UTF-8 (invalid byte at offset 3)")
    _one_line_error(_invoke("eval", ckpt, "--text", str(short), "--chunk", "64"), "19 tokens, fewer than one chunk of 64")
    _one_line_error(_invoke("eval", ckpt, "--text", str(short), "--holdout", "0.1", "--start", "0.2"), "give one of them")
    _one_line_error(_invoke("eval", ckpt, "--text", str(tmp_path / "none.txt")), "does not exist")
    with pytest.raises(RwkvExportError, match="need 0 <= start < end <= 1"):
        read_text(short, 0.7, 0.2)
