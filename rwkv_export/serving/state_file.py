"""State files: an exported model's recurrent state on disk, bound to the export it belongs to.

Format `rwkv-export-state/1`: an uncompressed `.npz` (numpy's zip of `.npy` files, read with
`allow_pickle=False`) holding

    <name>.npy     one array per state tensor of the manifest (x_att, aa, ... or x_att, wkv, x_ffn),
                   in the manifest's dtype and shape with the batch axis at the manifest's position
    __meta__.npy   uint8 bytes of a JSON object:
                   format       "rwkv-export-state/1"
                   fingerprint  the export's Manifest.fingerprint: sha256 of json.dumps({file: sha256},
                                sort_keys=True) over every graph, external-data, initial-state and
                                tokenizer file its manifest lists
                   model        {version, n_layer, n_embd, vocab_size, dtype}
                   batch        rows in the file
                   tensors      {name: {dtype, shape}}
                   content_sha256  sha256 over every tensor's name, dtype, shape and bytes
                   note         free text ("after the prompt", ...)

Loading checks, in order: a readable zip (the zip's CRC-32 catches a truncated or damaged file),
the format version, the content hash (catches an edit that rewrote the zip), the fingerprint and
model summary against the export it is loaded into, then every tensor's dtype and shape. Each
failure is one RwkvExportError line. Rows can be selected when saving or loading, and several
files concatenated into one batch (`load_states`): a server assembles batches from conversations.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError, first_line
from rwkv_export.fileio import atomic_write_bytes
from rwkv_export.manifest import Manifest
from rwkv_export.runtime.base import host_array

FORMAT = "rwkv-export-state/1"
META = "__meta__"


def model_summary(manifest: Manifest) -> dict[str, Any]:
    """What a state file records about its model: version, sizes, vocab and the export dtype."""
    model = manifest.model
    return {
        "version": model.version,
        "n_layer": model.n_layer,
        "n_embd": model.n_embd,
        "vocab_size": model.vocab_size,
        "dtype": manifest.dtype,
    }


def describe(summary: dict[str, Any]) -> str:
    return f"RWKV-{summary['version']} {summary['n_layer']}x{summary['n_embd']} vocab {summary['vocab_size']} {summary['dtype']}"


def content_hash(state: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, value in state.items():
        array = np.ascontiguousarray(value)
        h.update(f"{name}:{array.dtype.str}:{list(array.shape)}\n".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def select_rows(state: Mapping[str, Any], manifest: Manifest, rows: Sequence[int]) -> dict[str, np.ndarray]:
    """The given batch rows of a state (in that order), every tensor cut on its batch axis."""
    out = {}
    for spec in manifest.state:
        value = host_array(state[spec.name])
        axis = spec.batch_axis
        bad = [r for r in rows if not -value.shape[axis] <= r < value.shape[axis]]
        if bad or not rows:
            raise RwkvExportError(f"state rows {list(rows)}: the state has {value.shape[axis]} row(s) (0..{value.shape[axis] - 1})")
        out[spec.name] = np.ascontiguousarray(np.take(value, list(rows), axis=axis))
    return out


def encode(state: Mapping[str, Any], manifest: Manifest, note: str = "") -> bytes:
    """The .npz bytes of `state` (checked against the manifest first)."""
    arrays = {spec.name: np.ascontiguousarray(host_array(state[spec.name])) for spec in manifest.state}
    batch = _check_tensors(arrays, manifest, "state to save")
    meta = {
        "format": FORMAT,
        "fingerprint": manifest.fingerprint,
        "model": model_summary(manifest),
        "batch": batch,
        "tensors": {n: {"dtype": a.dtype.name, "shape": list(a.shape)} for n, a in arrays.items()},
        "content_sha256": content_hash(arrays),
        "note": note,
    }
    buffer = io.BytesIO()
    payload: dict[str, Any] = {**arrays, META: np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    np.savez(buffer, **payload)
    return buffer.getvalue()


def save_state(path: str | Path, state: Mapping[str, Any], manifest: Manifest, rows: Sequence[int] | None = None, note: str = "") -> None:
    """Write `state` (or only `rows` of it) to `path` atomically."""
    if rows is not None:
        state = select_rows(state, manifest, rows)
    atomic_write_bytes(path, encode(state, manifest, note))


def read_meta(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata, tensors) of a state file, checked for damage and edits but not against any export."""
    where = f"state file '{path}'"
    if not Path(path).is_file():
        raise RwkvExportError(f"{where} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(arrays.pop(META).tobytes().decode())
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, TypeError, AttributeError) as exc:
        reason = first_line(exc, 120)
        raise RwkvExportError(f"{where} is damaged or not an rwkv-export state file ({reason})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise RwkvExportError(f"{where}: format {found!r} is not supported (expected {FORMAT!r})")
    if content_hash(arrays) != meta.get("content_sha256"):
        raise RwkvExportError(f"{where} was edited: its tensors do not match the content_sha256 it records")
    return meta, arrays


def load_state(path: str | Path, manifest: Manifest, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The state in `path`, checked against the export `manifest` describes; optionally only `rows`."""
    meta, arrays = read_meta(path)
    where = f"state file '{path}'"
    mine, theirs = model_summary(manifest), meta.get("model", {})
    if meta.get("fingerprint") != manifest.fingerprint:
        if theirs != mine:
            raise RwkvExportError(f"{where} holds the state of a {_describe(theirs)} export; this export is {describe(mine)}")
        raise RwkvExportError(
            f"{where} belongs to another export of a {describe(mine)} model (fingerprint "
            f"{str(meta.get('fingerprint'))[:12]}, this export's is {manifest.fingerprint[:12]})"
        )
    _check_tensors(arrays, manifest, where)
    return select_rows(arrays, manifest, rows) if rows is not None else arrays


def load_states(paths: Sequence[str | Path], manifest: Manifest) -> dict[str, np.ndarray]:
    """Several state files concatenated on the batch axis, in order: one batch from many conversations."""
    if not paths:
        raise RwkvExportError("no state files to load")
    parts = [load_state(p, manifest) for p in paths]
    return {spec.name: np.concatenate([p[spec.name] for p in parts], axis=spec.batch_axis) for spec in manifest.state}


def _describe(summary: Any) -> str:
    try:
        return describe(summary)
    except (KeyError, TypeError):
        return "different"


def _check_tensors(arrays: Mapping[str, np.ndarray], manifest: Manifest, where: str) -> int:
    """Names, dtypes and shapes against the manifest; returns the (common) batch size."""
    names = [s.name for s in manifest.state]
    if sorted(arrays) != sorted(names):
        raise RwkvExportError(f"{where} holds tensors {sorted(arrays)}; this export's state is {names}")
    first = manifest.state[0]
    batch = arrays[first.name].shape[first.batch_axis] if arrays[first.name].ndim == len(first.shape) else -1
    for spec in manifest.state:
        value = arrays[spec.name]
        if value.dtype != np.dtype(spec.dtype):
            raise RwkvExportError(f"{where}: '{spec.name}' is {value.dtype}, this export's state is {spec.dtype}")
        expected = spec.concrete_shape(batch)
        if batch < 1 or value.shape != expected:
            raise RwkvExportError(
                f"{where}: '{spec.name}' has shape {list(value.shape)}, expected {list(expected)} (manifest shape {list(spec.shape)})"
            )
    return int(batch)


def fit_to_prompts(state: Mapping[str, np.ndarray], manifest: Manifest, prompts: int) -> dict[str, np.ndarray]:
    """A loaded state for `prompts` rows: one row is repeated for every prompt (a shared system
    prompt); otherwise the row count must equal the number of prompts (row i continues prompt i)."""
    spec = manifest.state[0]
    rows = state[spec.name].shape[spec.batch_axis]
    if rows == prompts:
        return dict(state)
    if rows == 1:
        return select_rows(state, manifest, [0] * prompts)
    raise RwkvExportError(
        f"the loaded state has {rows} rows but {prompts} prompt(s) were given: give one row (shared by every prompt) or one row per prompt"
    )
