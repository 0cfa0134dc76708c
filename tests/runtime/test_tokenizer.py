"""Tokenizers: round trips, streaming decode that never shows a half character, manifest-driven loading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from rwkv_export.errors import RwkvExportError
from rwkv_export.tokenizer import ByteTokenizer, HuggingFaceTokenizer, StreamDecoder, WorldTokenizer, load_tokenizer
from tests.conftest import TINY, TOKENIZER_20B, requires_shared, tiny_model

TEXTS = ["Hello, world!", "wörld 日本語 😀 — ok", "  leading spaces\nand\ttabs ", "a"]
requires_20b = pytest.mark.skipif(not TOKENIZER_20B.is_file(), reason=f"needs {TOKENIZER_20B} (../shared is absent)")
requires_rwkv = pytest.mark.skipif(importlib.util.find_spec("rwkv") is None, reason="needs the `rwkv` package (world vocabulary)")


KINDS = [
    pytest.param("bytes", id="bytes"),
    pytest.param("huggingface", id="20b", marks=requires_20b),
    pytest.param("world", id="world", marks=requires_rwkv),
]


@pytest.fixture(scope="module", params=KINDS)
def tok(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    makers = {"bytes": ByteTokenizer, "huggingface": lambda: HuggingFaceTokenizer(TOKENIZER_20B), "world": WorldTokenizer}
    return makers[request.param]()


def _stream(tok, ids: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    return [*pieces, decoder.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_stream(tok, text: str) -> None:  # type: ignore[no-untyped-def]
    ids = tok.encode(text)
    assert ids and all(0 <= i < tok.vocab_size for i in ids), f"{tok.kind}: ids {ids}"
    assert tok.decode(ids) == text, f"{tok.kind}: round trip of {text!r}"
    pieces = _stream(tok, ids)
    assert "".join(pieces) == text, f"{tok.kind}: streamed {pieces}"
    assert not any("\ufffd" in p for p in pieces), f"{tok.kind}: a split character leaked as U+FFFD: {pieces}"


def test_bytes_decode_invalid_utf8_replaces() -> None:
    tok = ByteTokenizer()
    assert tok.decode([0xFF, 0x41]) == "\ufffdA"
    # A character cut off at the end: held back while streaming, flushed as U+FFFD.
    pieces = _stream(tok, [0x41, 0xE6, 0x97])
    assert pieces[:3] == ["A", "", ""] and pieces[3] == "\ufffd"


def test_stream_gives_up_on_endless_invalid_bytes() -> None:
    """Invalid bytes must not be held forever: after a bounded wait they come out as U+FFFD."""
    pieces = _stream(ByteTokenizer(), [0xFF] * 20)
    assert "".join(pieces) == "\ufffd" * 20
    assert sum(1 for p in pieces[:-1] if p) >= 2


@requires_20b
def test_20b_known_ids() -> None:
    tok = HuggingFaceTokenizer(TOKENIZER_20B)
    assert tok.vocab_size == 50277
    assert tok.encode("Hello world") == [12092, 1533]


def test_load_from_manifest_info(tmp_path: Path) -> None:
    assert isinstance(load_tokenizer({"kind": "bytes", "file": None}), ByteTokenizer)
    assert isinstance(load_tokenizer({"tokenizer": {"kind": "bytes"}}), ByteTokenizer)
    with pytest.raises(RwkvExportError, match="--tokenizer 20B_tokenizer.json"):
        load_tokenizer({"kind": "gpt-neox-20b", "file": None})
    with pytest.raises(RwkvExportError, match="no tokenizer"):
        load_tokenizer({"kind": "none", "file": None})
    with pytest.raises(RwkvExportError, match="does not exist"):
        load_tokenizer({"kind": "bytes"}, tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RwkvExportError, match="not a Hugging Face tokenizer"):
        load_tokenizer({"kind": "bytes"}, bad)


@requires_20b
def test_override_file_wins() -> None:
    tok = load_tokenizer({"kind": "bytes"}, TOKENIZER_20B)
    assert tok.kind == "huggingface" and tok.vocab_size == 50277


@requires_rwkv
def test_world_vocab_size_and_known_text() -> None:
    tok = WorldTokenizer()
    assert tok.vocab_size == 65536
    ids = tok.encode("Hello")
    assert tok.decode(ids) == "Hello" and max(ids) < 65536


@requires_shared
def test_bytes_on_tiny_model() -> None:
    """rwkv.cpp's own test feeds `"in` as bytes; our encoding and the model agree with its logits."""
    from rwkv_export.checkpoint import load_checkpoint
    from rwkv_export.generate import Sampling, generate
    from rwkv_export.parity.backends import TorchBackend

    tok = ByteTokenizer()
    ids = tok.encode('"in')
    assert ids == [34, 105, 110]
    backend = TorchBackend(load_checkpoint(tiny_model("4v0-660K")), "float32")
    logits, _ = backend.prefill(np.array([ids]))
    expected = np.fromfile(TINY / "expected-logits-4v0-660K.bin", dtype=np.float32)
    assert np.abs(logits[0, -1] - expected).max() < 1e-4
    out = [int(t[0]) for t in generate(backend, [ids], 24, Sampling(temperature=0.0))]
    text = "".join(_stream(tok, out))
    assert text == tok.decode(out) and len(text) > 0


def _greedy_world_oracle(text: str) -> list[int]:
    """Independent of the rwkv package's trie: the vocabulary file read line by line, then greedy
    longest match over the UTF-8 bytes (how the world tokenizer is defined)."""
    import ast

    import rwkv

    table: dict[bytes, int] = {}
    for line in (Path(rwkv.__file__).parent / "rwkv_vocab_v20230424.txt").read_text(encoding="utf-8").splitlines():
        idx, rest = line.split(" ", 1)
        token_repr, length = rest.rsplit(" ", 1)
        token = ast.literal_eval(token_repr)
        raw = token.encode("utf-8") if isinstance(token, str) else token
        assert len(raw) == int(length), line
        table[raw] = int(idx)
    longest = max(map(len, table))
    data, out, i = text.encode("utf-8"), [], 0
    while i < len(data):
        for n in range(min(longest, len(data) - i), 0, -1):
            if data[i : i + n] in table:
                out.append(table[data[i : i + n]])
                i += n
                break
        else:
            raise AssertionError(f"byte {data[i]} not in the vocabulary")
    return out


@requires_rwkv
@pytest.mark.parametrize(
    "text", ["Hello world", "你好，世界", "\n\nUser: what is 2+2?\n\nAssistant:", "emoji 🦀 and tabs\t\tx", "  leading spaces"]
)
def test_world_tokenizer_is_greedy_longest_match_of_the_vocab_file(text: str) -> None:
    tok = WorldTokenizer()
    ids = tok.encode(text)
    assert ids == _greedy_world_oracle(text)
    assert tok.decode(ids) == text
