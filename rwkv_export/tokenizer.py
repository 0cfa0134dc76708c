"""Tokenizers for exported models: byte-level, Hugging Face `tokenizers` JSON, and the RWKV world vocabulary.

The manifest's `tokenizer` section says which one a model expects:
    bytes         vocab 256, token id = byte value (the tiny rwkv.cpp models)
    huggingface   DIR/tokenizer.json shipped with the export (GPT-NeoX 20B for the Pile RWKV-4 models)
    gpt-neox-20b  the 20B tokenizer, not shipped: the user passes --tokenizer 20B_tokenizer.json
    world         65536-token RWKV world vocabulary from the `rwkv` PyPI package (RWKV-5 and later)
    none          unknown: ids only (--tokens), or --tokenizer FILE

`StreamDecoder` turns ids into text as they arrive, holding back text that is not stable yet (a
multi-byte character split across tokens) so the terminal never shows a stray U+FFFD mid-stream.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from rwkv_export.errors import RwkvExportError, first_line

REPLACEMENT = "\ufffd"
WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"
# A run of ids that never decodes cleanly (invalid bytes) is flushed after this many tokens anyway.
MAX_PENDING_TOKENS = 8


class Tokenizer(Protocol):
    kind: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """Vocab 256: token id = UTF-8 byte. Invalid byte sequences decode to U+FFFD, never raise."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HuggingFaceTokenizer:
    """A `tokenizers` JSON file (e.g. GPT-NeoX 20B's byte-level BPE)."""

    kind = "huggingface"

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.path = Path(path)
        try:
            self._tok = HFTokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises a bare Exception with a serde message
            raise RwkvExportError(f"'{self.path}' is not a Hugging Face tokenizer.json ({first_line(exc, 200)})") from exc
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        # skip_special_tokens=False: an <|endoftext|> the model produced is part of what it said.
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class WorldTokenizer:
    """The RWKV world vocabulary through the `rwkv` package's own TRIE_TOKENIZER."""

    kind = "world"
    vocab_size = 65536

    def __init__(self, path: str | Path | None = None) -> None:
        try:
            import rwkv
            import rwkv.rwkv_tokenizer  # noqa: F401  (fail here, with the install hint, if it is missing)
        except ImportError as exc:
            raise RwkvExportError("the RWKV world tokenizer needs the `rwkv` package: pip install rwkv") from exc
        self.path = Path(path) if path is not None else Path(rwkv.__file__).parent / WORLD_VOCAB_FILE
        if not self.path.is_file():
            raise RwkvExportError(f"world vocabulary '{self.path}' does not exist (reinstall the `rwkv` package)")
        self._tok = _trie(str(self.path))

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encodeBytes(text.encode("utf-8")))

    def decode(self, ids: Sequence[int]) -> str:
        # The package's own decode() raises on a split character; decode the bytes leniently instead.
        return bytes(self._tok.decodeBytes([int(i) for i in ids])).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=2)
def _trie(path: str) -> Any:
    """Building the trie of 65536 entries in Python takes seconds: once per process."""
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    return TRIE_TOKENIZER(path)


class StreamDecoder:
    """Incremental detokenizer: push ids one at a time, get back only text that is final.

    Decodes a window from the last emitted boundary and emits the new suffix once it no longer ends
    in U+FFFD (as Hugging Face's text streamers do); decoding a window rather than single ids keeps
    BPE merges and multi-byte characters intact.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: everything before it is emitted and final
        self.read = 0  # ids[prefix:read] decode to text already emitted

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        done = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        pending = len(self.ids) - self.read
        if len(text) > len(done) and (not text.endswith(REPLACEMENT) or pending >= MAX_PENDING_TOKENS):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character comes out as U+FFFD)."""
        done = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(done) :]


def load_tokenizer(source: str | Path | Mapping[str, Any], override_file: str | Path | None = None) -> Tokenizer:
    """The tokenizer for an exported DIR (or its manifest / manifest['tokenizer'] dict).

    `override_file` (the CLI's --tokenizer) wins: a .json is a Hugging Face tokenizer, a .txt a
    world-format vocabulary.
    """
    if override_file is not None:
        return _from_file(Path(override_file))
    directory, info = _tokenizer_info(source)
    kind = info.get("kind", "none")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "huggingface":
        file = info.get("file")
        if not file or directory is None or not (directory / file).is_file():
            raise RwkvExportError(f"the manifest names tokenizer file '{file}' but it is not in '{directory}'; pass --tokenizer FILE")
        return HuggingFaceTokenizer(directory / file)
    if kind == "world":
        return WorldTokenizer()
    if kind == "gpt-neox-20b":
        raise RwkvExportError(
            "this model uses the GPT-NeoX 20B tokenizer, which was not exported with it; pass --tokenizer 20B_tokenizer.json"
        )
    raise RwkvExportError(f"the manifest records no tokenizer (kind '{kind}'); pass --tokenizer FILE or give ids with --tokens")


def _from_file(path: Path) -> Tokenizer:
    if not path.is_file():
        raise RwkvExportError(f"tokenizer file '{path}' does not exist")
    if path.suffix.lower() == ".txt":
        return WorldTokenizer(path)
    return HuggingFaceTokenizer(path)


def _tokenizer_info(source: str | Path | Mapping[str, Any]) -> tuple[Path | None, Mapping[str, Any]]:
    """(directory the tokenizer file is relative to, manifest['tokenizer']); a directory's manifest
    is read through the typed Manifest, so its tokenizer file is inside it and matches its sha256."""
    if isinstance(source, Mapping):
        info = source.get("tokenizer", source)
        return None, info if isinstance(info, Mapping) else {}
    from rwkv_export.manifest import Manifest

    directory = Path(source)
    return directory, Manifest.read(directory).tokenizer.to_dict()


def describe(tokenizer: Tokenizer) -> str:
    """One line for logs: kind, vocab and file."""
    path = getattr(tokenizer, "path", None)
    return f"{tokenizer.kind} tokenizer (vocab {tokenizer.vocab_size}{f', {path}' if path else ''})"


__all__ = ["ByteTokenizer", "HuggingFaceTokenizer", "StreamDecoder", "Tokenizer", "WorldTokenizer", "describe", "load_tokenizer"]
