"""manifest.json, typed: the one contract between `export` and everything that runs an export.

    m = Manifest.read("out/tiny")          # parsed, validated as a whole, files checked (sha256)
    m.graphs["step"].inputs[1].shape       # (2, 'batch', 32)
    m.state[0].name, m.model.vocab_size, m.tokenizer.kind, m.export.op, m.engines, m.fingerprint
    m.initial_state(batch)                 # {state name: array}, from constants or initial files
    Manifest(...).write(directory)         # what `export` (and `build`, for engines) does

The JSON on disk is format "rwkv-export/1" (README, "The exported directory"); key order and
content round-trip exactly. Every missing, unknown or wrong-typed field is one line naming it
(`DIR/manifest.json: graphs.prefill.inputs[2].shape: expected a list of ints or dim names`), and so
is every file name that leaves the directory, every file whose sha256 differs (files.py), a state
too large to allocate, a non-finite initial value. This module imports no stage: runtime, engine,
parity, bench, tokenizer and CLI read it without loading the exporter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError
from rwkv_export.manifest import fields as F
from rwkv_export.manifest.files import checked_sha256, read_json, resolve
from rwkv_export.manifest.specs import (
    Engine,
    ExportOptions,
    Graph,
    ModelInfo,
    Source,
    StateSpec,
    TensorSpec,
    TokenizerInfo,
    check_whole,
    parse_state,
)

MANIFEST = "manifest.json"
FORMAT = "rwkv-export/1"

__all__ = [
    "FORMAT",
    "MANIFEST",
    "Engine",
    "ExportOptions",
    "Graph",
    "Manifest",
    "ModelInfo",
    "Source",
    "StateSpec",
    "TensorSpec",
    "TokenizerInfo",
    "read_manifest",
]


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    dtype: str
    graphs: dict[str, Graph]
    state: tuple[StateSpec, ...]
    export: ExportOptions
    tokenizer: TokenizerInfo = field(default_factory=lambda: TokenizerInfo("none", None))
    source: Source | None = None
    dynamic_dims: tuple[str, ...] | None = ("batch", "seq")
    versions: dict[str, str] | None = None
    engines: dict[str, Engine] | None = None
    format: str = FORMAT
    directory: Path | None = field(default=None, compare=False)  # where it was read from (not written)

    # --- reading ------------------------------------------------------------------------------------

    @classmethod
    def read(cls, directory: str | Path, check_files: bool = True) -> Manifest:
        """DIR/manifest.json, validated; check_files: every named file inside DIR with its sha256."""
        directory = Path(directory)
        if not directory.exists():
            raise RwkvExportError(f"export directory '{directory}' does not exist")
        if not directory.is_dir():
            raise RwkvExportError(f"'{directory}' is not a directory (expected the output of `rwkv-export export`)")
        path = directory / MANIFEST
        if not path.exists():
            raise RwkvExportError(f"'{directory}' has no {MANIFEST}: not an rwkv-export output directory")
        data = read_json(path)
        found = data.get("format") if isinstance(data, dict) else None
        if found != FORMAT:
            shown = found if isinstance(found, str) or found is None else F.kind(found)
            raise RwkvExportError(f"{path}: manifest format '{shown}' is not supported (expected '{FORMAT}'); re-export with this version")
        try:
            manifest = dataclasses.replace(cls.from_dict(data), directory=directory)
        except F.FieldError as exc:
            raise RwkvExportError(f"{path}: {exc}") from None
        if check_files:
            manifest.check_files()
        return manifest

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and validate a manifest document; raises fields.FieldError naming the field."""
        o = F.Obj(data, "")
        o.get("format", F.one_of(FORMAT))
        manifest = cls(
            model=o.get("model", ModelInfo.parse),
            source=o.get("source", Source.parse, None),
            dtype=o.get("dtype", F.one_of("float32", "float16")),
            graphs=o.get("graphs", F.dict_of(Graph.parse, min_len=1)),
            state=o.get("state", parse_state),
            dynamic_dims=o.get("dynamic_dims", F.list_of(F.string), None),
            tokenizer=o.get("tokenizer", TokenizerInfo.parse, TokenizerInfo("none", None)),
            export=o.get("export", ExportOptions.parse),
            versions=o.get("versions", F.dict_of(F.string), None),
            engines=o.get("engines", F.dict_of(Engine.parse), None),
        )
        o.done()
        check_whole(manifest)
        return manifest

    def check_files(self) -> None:
        """Every graph, external-data, initial-state and tokenizer file: inside DIR, regular, sha256 as
        recorded; initial-state files also hold finite floats of the state's shape."""
        directory = self._dir()
        expected: dict[Path, tuple[str, str]] = {}
        for name, graph in self.graphs.items():
            for file, digest in graph.sha256.items():
                expected[resolve(directory, file, f"graphs.{name}.sha256.{file}")] = (digest, f"graphs.{name}.sha256.{file}")
        for i, spec in enumerate(self.state):
            if spec.initial_file is not None and spec.initial_sha256 is not None:
                where = f"state[{i}].initial_file"
                expected[resolve(directory, spec.initial_file, where)] = (spec.initial_sha256, where)
        if self.tokenizer.file is not None and self.tokenizer.sha256 is not None:
            expected[resolve(directory, self.tokenizer.file, "tokenizer.file")] = (self.tokenizer.sha256, "tokenizer.file")
        checked_sha256(expected, directory)
        for i, spec in enumerate(self.state):
            if spec.initial_file is not None:
                self._initial_file(i, spec)  # shape, dtype, finite: before anyone allocates a batch of it

    def _dir(self) -> Path:
        if self.directory is None:
            raise RwkvExportError("this manifest was not read from a directory (Manifest.read(DIR))")
        return self.directory

    # --- writing ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "model": self.model.to_dict()}
        if self.source is not None:
            out["source"] = dataclasses.asdict(self.source)
        out |= {"dtype": self.dtype, "graphs": {n: g.to_dict() for n, g in self.graphs.items()}, "state": [s.to_dict() for s in self.state]}
        if self.dynamic_dims is not None:
            out["dynamic_dims"] = list(self.dynamic_dims)
        out |= {"tokenizer": self.tokenizer.to_dict(), "export": self.export.to_dict()}
        if self.versions is not None:
            out["versions"] = dict(self.versions)
        if self.engines is not None:
            out["engines"] = {n: e.to_dict() for n, e in self.engines.items()}
        return out

    def write(self, directory: str | Path) -> Path:
        """Validate, then write DIR/manifest.json atomically; return its path."""
        from rwkv_export.fileio import atomic_write_json

        data = self.to_dict()
        try:
            Manifest.from_dict(json.loads(json.dumps(data)))
        except F.FieldError as exc:
            raise RwkvExportError(f"refusing to write an invalid manifest: {exc}") from None
        path = Path(directory) / MANIFEST
        atomic_write_json(path, data)
        return path

    # --- using --------------------------------------------------------------------------------------

    def graph(self, name: str) -> Graph:
        if name not in self.graphs:
            raise RwkvExportError(f"{self._where()}: graphs: no '{name}' graph (found {', '.join(self.graphs)})")
        return self.graphs[name]

    def path(self, name: str, where: str = "file") -> Path:
        """A file of this export (a manifest file name, already refused if it leaves the directory)."""
        return resolve(self._dir(), name, where)

    @property
    def fingerprint(self) -> str:
        """sha256 over every recorded file hash: two exports with the same fingerprint hold the same files."""
        files: dict[str, str | None] = {f: d for g in self.graphs.values() for f, d in g.sha256.items()}
        files |= {s.initial_file: s.initial_sha256 for s in self.state if s.initial_file}
        if self.tokenizer.file:
            files[self.tokenizer.file] = self.tokenizer.sha256
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        """{state name: array} for `batch` rows: each constant, or its initial file (.npy, batch axis 1) broadcast."""
        if not isinstance(batch, int) or batch < 1:
            raise RwkvExportError(f"batch must be a positive int, got {batch!r}")
        state = {}
        for i, spec in enumerate(self.state):
            shape = spec.concrete_shape(batch)
            if spec.initial_file:
                value = self._initial_file(i, spec)
                state[spec.name] = np.ascontiguousarray(np.broadcast_to(value.astype(spec.dtype), shape))
            else:
                state[spec.name] = np.full(shape, spec.initial, dtype=spec.dtype)
        return state

    def _initial_file(self, i: int, spec: StateSpec) -> np.ndarray:
        where = f"state[{i}].initial_file"
        assert spec.initial_file is not None
        path = self.path(spec.initial_file, where)
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise RwkvExportError(f"{self._where()}: {where}: {spec.initial_file} is not a .npy array ({str(exc)[:120]})") from None
        want = spec.concrete_shape(1)
        if value.shape != want or value.dtype.kind != "f":
            raise RwkvExportError(
                f"{self._where()}: {where}: {spec.initial_file} holds {value.dtype} {list(value.shape)}, expected float {list(want)}"
            )
        if not np.isfinite(value).all():
            raise RwkvExportError(f"{self._where()}: {where}: {spec.initial_file} holds NaN or Inf values")
        return value

    def _where(self) -> str:
        return str(self.directory / MANIFEST) if self.directory is not None else MANIFEST


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """DIR/manifest.json as a plain dict, validated (for callers that predate the type)."""
    return Manifest.read(directory).to_dict()
