"""Mutated checkpoints of every format, and a watchdog that loads them (tests/checkpoint/test_checkpoint_fuzz.py,
scripts/fuzz_checkpoints.py).

Bases: small random checkpoints of every RWKV version (and the shared tiny rwkv.cpp models when
present), written as .pth, .safetensors, an HF directory (RWKV-4) and rwkv.cpp FP32 / FP16. Each case
applies one seeded mutation: byte-level (truncation, bit flips, byte runs), key-level (missing,
extra, renamed, non-string, a block index of 10^9), tensor-level (wrong shapes, ranks, dtypes, NaN /
Inf values), format-level (huge header dims, negative dims, a safetensors header claiming more than
the file holds, a deflate-compressed zip bomb, a legacy pickle, broken config.json, a FIFO).

`Runner` loads each case in a worker process under RLIMIT_AS, answering one JSON line per case;
a case that outlives its timeout is a hang (the worker is killed and restarted), a worker that dies
is a crash. Outcomes: clean (one-line RwkvExportError), accepted (loads; weights finite, shapes
consistent), nonfinite (loads with NaN/Inf weights), crash (anything else), hang.
"""

from __future__ import annotations

import json
import math
import os
import random
import select
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
FORMATS = ("pth", "safetensors", "hf", "rwkvcpp", "rwkvcpp-fp16")
LABELS = {"pth": ".pth", "safetensors": ".safetensors", "hf": "HF directory", "rwkvcpp": "rwkv.cpp FP32", "rwkvcpp-fp16": "rwkv.cpp FP16"}
OUTCOMES = ("clean", "crash", "hang", "nonfinite", "accepted")
MEMORY_LIMIT = 3 << 30  # address space of a loading worker (torch alone maps ~0.7 GiB)
_SUFFIX = {"pth": ".pth", "safetensors": ".safetensors", "hf": "", "rwkvcpp": ".bin", "rwkvcpp-fp16": ".bin"}


@dataclass
class Base:
    fmt: str
    path: Path
    weights: dict[str, torch.Tensor] | None  # BlinkDL form (None for a shared file we did not make)
    version: str


def make_bases(
    root: Path,
    shared_tiny: Path | None = None,
    versions: tuple[str, ...] = ("4", "5.1", "5.2", "6", "7"),
    dtypes: tuple[torch.dtype, ...] = (torch.float32,),
) -> dict[str, list[Base]]:
    """Valid checkpoints to mutate: every version in every format it has (HF: RWKV-4 only)."""
    from rwkv_export.checkpoint import Checkpoint, save_checkpoint
    from rwkv_export.checkpoint.random import random_weights

    bases: dict[str, list[Base]] = {f: [] for f in FORMATS}
    for i, (version, dtype) in enumerate((v, d) for v in versions for d in dtypes):
        config, weights = random_weights(version, 2, 32, 50, head_size=8, lora=4, seed=i, dtype=dtype)
        for fmt in FORMATS:
            if (fmt == "hf" and version != "4") or (fmt.startswith("rwkvcpp") and dtype != torch.float32):
                continue
            path = root / f"base-{version}-{str(dtype)[6:]}-{fmt}{_SUFFIX[fmt]}"
            save_checkpoint(Checkpoint(config, weights, "random", path), path, fmt)
            bases[fmt].append(Base(fmt, path, weights, version))
    if shared_tiny is not None and shared_tiny.is_dir():
        for file in sorted(shared_tiny.glob("tiny-rwkv-*.bin")):
            fmt = "rwkvcpp-fp16" if file.stem.endswith("FP16") else "rwkvcpp"
            bases[fmt].append(Base(fmt, file, None, "?"))
    return bases


# --- byte-level ------------------------------------------------------------------------------------


def _bytes_mutation(data: bytes, rng: random.Random, kind: str) -> bytes:
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    out = bytearray(data)
    if kind == "bitflip":
        for _ in range(rng.choice((1, 1, 2, 8, 64))):
            pos = rng.randrange(len(out)) if rng.random() < 0.5 else rng.randrange(min(len(out), 512))
            out[pos] ^= 1 << rng.randrange(8)
    else:  # byterun
        start = rng.randrange(len(out)) if rng.random() < 0.5 else rng.randrange(min(len(out), 256))
        run = rng.choice((1, 4, 16, 256, 4096))
        fill = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        out[start : start + run] = bytes([fill]) * len(out[start : start + run])
    return bytes(out)


# --- tensor-level ----------------------------------------------------------------------------------


def _weights_mutation(weights: dict[str, torch.Tensor], rng: random.Random, kind: str) -> dict[Any, torch.Tensor]:
    w: dict[Any, torch.Tensor] = {k: v.clone() for k, v in weights.items()}
    key = rng.choice(sorted(w))
    t = w[key]
    if kind == "drop_key":
        del w[key]
    elif kind == "extra_key":
        w[rng.choice(("blocks.0.att.bogus", "bogus", "blocks.1.ffn.extra.weight", "head.bias"))] = torch.zeros(3)
    elif kind == "rename_key":
        w[key.replace("blocks.1.", "blocks.7.") if "blocks.1." in key else key + "_x"] = w.pop(key)
    elif kind == "huge_block":
        w[rng.choice(("blocks.1000000000.att.key.weight", "blocks.999999999999.ln1.weight", "blocks.3.ln1.weight"))] = torch.zeros(32)
    elif kind == "nonstring_key":
        w[rng.choice((7, (1, 2), 3.5, b"emb.weight", None))] = w.pop(key)
    elif kind == "reshape":
        w[key] = t.reshape(-1) if t.dim() > 1 else t[: max(0, t.shape[0] - rng.choice((1, t.shape[0])))]
    elif kind == "rank":
        w[key] = rng.choice((t.reshape(()) if t.numel() == 1 else torch.zeros(()), t.unsqueeze(0), torch.zeros((0,) + tuple(t.shape[1:]))))
    elif kind == "dtype":
        w[key] = t.to(rng.choice((torch.int32, torch.int64, torch.bool, torch.uint8, torch.complex64, torch.float64)))
    elif kind == "nonfinite":
        flat = t.reshape(-1).clone()
        flat[rng.randrange(flat.numel())] = rng.choice((math.nan, math.inf, -math.inf))
        w[key] = flat.reshape(t.shape)
    return w


# --- writers ---------------------------------------------------------------------------------------


def _write_weights(fmt: str, weights: dict[Any, torch.Tensor], version: str, path: Path) -> None:
    from safetensors.torch import save_file

    from rwkv_export.checkpoint import hf, rwkvcpp

    if fmt == "pth":
        torch.save(weights, path)
    elif fmt == "safetensors":
        save_file({str(k): v.contiguous() for k, v in weights.items()}, str(path))
    elif fmt == "hf":
        path.mkdir()
        save_file({hf.blink_to_hf(str(k)): v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(hf.hf_config(2, 32, 50, 128)))
    else:
        raw = rwkvcpp.to_rwkvcpp({str(k): v for k, v in weights.items()}, version)
        records = [(k, t.numpy().astype("float16" if fmt.endswith("fp16") and t.dim() == 2 else "float32")) for k, t in raw.items()]
        path.write_bytes(_pack_rwkvcpp((0x67676D66, 101, 50, 32, 2, int(fmt.endswith("fp16"))), records))


def _pack_rwkvcpp(
    header: tuple[int, ...],
    records: list[tuple[str, Any]],
    dims: dict[int, tuple[int, ...]] | None = None,
    codes: dict[int, int] | None = None,
) -> bytes:
    """An rwkv.cpp file from (key, array) records; `dims` / `codes` override record i's header fields."""
    chunks = [struct.pack("<6i", *header)]
    for i, (key, array) in enumerate(records):
        shape = (dims or {}).get(i, tuple(reversed(array.shape)))
        code = (codes or {}).get(i, 1 if array.dtype.itemsize == 2 else 0)
        encoded = key.encode("utf-8", "surrogateescape")
        chunks.append(struct.pack(f"<3i{len(shape)}i", len(shape), len(encoded), code, *shape) + encoded + array.tobytes())
    return b"".join(chunks)


def _read_records(path: Path) -> tuple[tuple[int, ...], list[tuple[str, Any]]]:
    import numpy as np

    data = path.read_bytes()
    header, offset, records = struct.unpack_from("<6i", data), 24, []
    while offset < len(data):
        n, key_len, code = struct.unpack_from("<3i", data, offset)
        dims = struct.unpack_from(f"<{n}i", data, offset + 12)
        offset += 12 + 4 * n
        key = data[offset : offset + key_len].decode()
        offset += key_len
        dtype = np.float16 if code == 1 else np.float32
        count = int(np.prod(dims))
        records.append((key, np.frombuffer(data, dtype, count, offset).reshape(tuple(reversed(dims))).copy()))
        offset += count * np.dtype(dtype).itemsize
    return header, records


# --- format-level ----------------------------------------------------------------------------------

_HUGE_DIMS = ((2**31 - 1,), (-1,), (0,), (-(2**31),), (1 << 20, 1 << 20), (7, 7, 7), (1, 1, 1), ())


def _rwkvcpp_mutation(path: Path, rng: random.Random, kind: str) -> bytes:
    import numpy as np

    header, records = _read_records(path)
    i = rng.randrange(len(records))
    key, array = records[i]
    dims: dict[int, tuple[int, ...]] = {}
    codes: dict[int, int] = {}
    if kind == "rec_dims":
        dims[i] = rng.choice(_HUGE_DIMS + (tuple(reversed(array.shape)) + (1,), (array.size + 1,), (2, 3, 5, 7)))
    elif kind == "rec_dtype":
        codes[i] = rng.choice((0, 1, 2, 5, 9, -1, 1000))
    elif kind == "rec_key":
        new_key = rng.choice(("blocks.1000000000.att.key.weight", "blocks.2.ln1.weight", "x" * 2000, "emb.weight\udcff", "bogus"))
        records[i] = (new_key, array)
    elif kind == "rec_drop":
        del records[i]
    elif kind == "rec_dup":
        records.append(records[i])
    elif kind == "rec_reshape":
        records[i] = (key, array.reshape(-1) if array.ndim > 1 else array.reshape(1, -1, 1) if rng.random() < 0.5 else array[:-1])
    elif kind == "header":
        fields = list(header)
        j = rng.randrange(6)
        fields[j] = rng.choice((0, -1, 99, 10**9, fields[j] + 1, 2**31 - 1))
        header = tuple(fields)
    elif kind == "nonfinite":
        array = array.copy()
        array.flat[rng.randrange(array.size)] = rng.choice((np.nan, np.inf, -np.inf))
        records[i] = (key, array)
    return _pack_rwkvcpp(header, records, dims, codes) + (b"\x07" * rng.choice((1, 5, 12)) if kind == "trailing" else b"")


def _safetensors_mutation(data: bytes, rng: random.Random, kind: str) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    name = rng.choice(sorted(k for k in header if k != "__metadata__"))
    if kind == "st_header_len":
        return rng.choice((10**12, 2**63, len(data), n + 1, 0)).to_bytes(8, "little") + data[8:]
    if kind == "st_shape":
        header[name]["shape"] = rng.choice(([10**12, 10**12], [2**31, 4], [-1, 32], [], [0], [1] * 40))
    elif kind == "st_offsets":
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice(([0, 10**15], [end, begin], [begin, end + 4], [-8, end], [begin + 1, end + 1]))
    elif kind == "st_dtype":
        header[name]["dtype"] = rng.choice(("I32", "BOOL", "F64", "U8", "C64", "F8_E4M3", "XYZ", 7))
    text = "[" * 100_000 + "]" * 100_000 if kind == "st_deep" else json.dumps(header)
    encoded = text.encode() + b" " * (-len(text) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + body


def _config_mutation(rng: random.Random, kind: str) -> bytes:
    from rwkv_export.checkpoint.hf import hf_config

    cfg: dict[str, Any] = hf_config(2, 32, 50, 128)
    if kind == "config_bytes":
        return rng.choice((b"\xff\xfe{}", json.dumps(cfg).encode("utf-16"), b'{"model_type": "rwkv\xc3"}'))
    if kind == "config_deep":
        return rng.choice((b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000))
    if kind == "config_scalar":
        return rng.choice((b"42", b"[1, 2]", b'"rwkv"', b"null", b"", b"1" * 5000))
    field = rng.choice(("vocab_size", "hidden_size", "attention_hidden_size", "intermediate_size", "num_hidden_layers", "model_type"))
    if kind == "config_dims":
        cfg[field] = rng.choice((cfg[field] + 1 if isinstance(cfg[field], int) else "gpt2", 10**9, 0, 10**30))
    else:  # config_types
        cfg[field] = rng.choice((-1, "32", 32.0, True, None, [32], {"a": 1}, 1.5e300))
    return json.dumps(cfg).encode()


def _pth_mutation(base: Base, rng: random.Random, kind: str, out: Path) -> None:
    assert base.weights is not None
    if kind == "legacy":
        torch.save(base.weights, out, _use_new_zipfile_serialization=False)
    elif kind == "not_dict":
        torch.save(rng.choice(([base.weights["emb.weight"]], {"state_dict": 5}, base.weights["emb.weight"], {"a": "b"}, 12)), out)
    else:  # zip_bomb: one record replaced by a deflate-compressed run of zeros
        with zipfile.ZipFile(base.path) as src, zipfile.ZipFile(out, "w") as dst:
            names = src.namelist()
            victim = rng.choice([n for n in names if "/data/" in n])
            for name in names:
                if name == victim:
                    dst.writestr(name, _zeros(rng.choice((64, 256)) << 20), compress_type=zipfile.ZIP_DEFLATED)
                else:
                    dst.writestr(name, src.read(name))


_ZERO_CACHE: dict[int, bytes] = {}


def _zeros(n: int) -> bytes:
    return _ZERO_CACHE.setdefault(n, bytes(n))


# --- cases -----------------------------------------------------------------------------------------

BYTE_KINDS = ("truncate", "bitflip", "byterun")
WEIGHT_KINDS = ("drop_key", "extra_key", "rename_key", "huge_block", "reshape", "rank", "dtype", "nonfinite", "nonfinite")
ST_KINDS = ("st_header_len", "st_shape", "st_offsets", "st_dtype", "st_deep")
KINDS = {
    "pth": BYTE_KINDS * 2 + WEIGHT_KINDS + ("nonstring_key", "zip_bomb", "legacy", "not_dict"),
    "safetensors": BYTE_KINDS * 2 + WEIGHT_KINDS + ST_KINDS,
    "hf": BYTE_KINDS
    + WEIGHT_KINDS
    + ST_KINDS
    + ("config_bytes", "config_deep", "config_scalar", "config_dims", "config_dims", "config_types", "fifo", "devzero"),
    "rwkvcpp": BYTE_KINDS * 2
    + (
        "rec_dims",
        "rec_dims",
        "rec_dtype",
        "rec_key",
        "rec_drop",
        "rec_dup",
        "rec_reshape",
        "header",
        "nonfinite",
        "nonfinite",
        "trailing",
    ),
}
KINDS["rwkvcpp-fp16"] = KINDS["rwkvcpp"]


def make_case(base: Base, rng: random.Random, out: Path) -> str:
    """Write one mutation of `base` at `out` (a file, or a directory for HF); return its kind."""
    kinds = KINDS[base.fmt]
    if base.weights is None:
        kinds = tuple(k for k in kinds if k not in WEIGHT_KINDS)
    kind = rng.choice(kinds)
    if base.fmt == "hf":
        _hf_case(base, rng, kind, out)
    elif kind in BYTE_KINDS:
        out.write_bytes(_bytes_mutation(base.path.read_bytes(), rng, kind))
    elif base.fmt.startswith("rwkvcpp"):
        out.write_bytes(_rwkvcpp_mutation(base.path, rng, kind))
    elif kind in ST_KINDS:
        out.write_bytes(_safetensors_mutation(base.path.read_bytes(), rng, kind))
    elif kind in WEIGHT_KINDS or kind == "nonstring_key":
        assert base.weights is not None
        _write_weights(base.fmt, _weights_mutation(base.weights, rng, kind), base.version, out)
    else:
        _pth_mutation(base, rng, kind, out)
    return kind


def _hf_case(base: Base, rng: random.Random, kind: str, out: Path) -> None:
    assert base.weights is not None
    if kind in WEIGHT_KINDS:
        _write_weights("hf", _weights_mutation(base.weights, rng, kind), base.version, out)
        return
    out.mkdir()
    config = (base.path / "config.json").read_bytes()
    weights = (base.path / "model.safetensors").read_bytes()
    if kind in BYTE_KINDS:
        if rng.random() < 0.5:
            config = _bytes_mutation(config, rng, kind)
        else:
            weights = _bytes_mutation(weights, rng, kind)
    elif kind in ST_KINDS:
        weights = _safetensors_mutation(weights, rng, kind)
    elif kind.startswith("config_"):
        config = _config_mutation(rng, kind)
    (out / "config.json").write_bytes(config)
    if kind == "fifo":
        os.mkfifo(out / rng.choice(("model.safetensors", "model-00002.safetensors")))
        if (out / "model.safetensors").exists():
            return
    elif kind == "devzero":
        os.symlink("/dev/zero", out / "model.safetensors")
        return
    (out / "model.safetensors").write_bytes(weights)


# --- the watchdog ----------------------------------------------------------------------------------


def worker_main() -> None:
    """Child: load each path read from stdin; answer one JSON line {outcome, detail}."""
    import resource
    import traceback
    import warnings

    limit = int(os.environ.get("FUZZ_MEMORY_LIMIT", MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from rwkv_export.checkpoint import load_checkpoint
    from rwkv_export.errors import RwkvExportError

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        warnings.resetwarnings()  # "default": every warning is recorded below, once per case
        try:
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                ckpt = load_checkpoint(line.strip())
            if warned:  # printed on stderr: the one error line would not be alone
                raise RuntimeError(f"warning on stderr: {warned[0].message}")
            finite = all(bool(torch.isfinite(t).all()) for t in ckpt.weights.values() if t.is_floating_point())
            answer = {"outcome": "accepted" if finite else "nonfinite", "detail": ckpt.config.version}
        except RwkvExportError as exc:
            if warned:
                answer = {"outcome": "crash", "detail": f"warning on stderr: {warned[0].message}"[:300]}
                print(json.dumps(answer), flush=True)
                continue
            message = str(exc)
            one_line = bool(message) and "\n" not in message and "Traceback" not in message
            answer = {"outcome": "clean" if one_line else "crash", "detail": message[:300]}
        except BaseException as exc:  # every other exception is a finding
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            answer = {"outcome": "crash", "detail": f"{type(exc).__name__}: {str(exc)[:150]} at {Path(frame.filename).name}:{frame.lineno}"}
        print(json.dumps(answer), flush=True)


class Runner:
    """Feeds paths to a worker process; kills and restarts it on a hang or death."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
        code = "from tests.checkpoint._checkpoint_mutations import worker_main; worker_main()"
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env=env,
        )
        assert proc.stdout is not None
        if not select.select([proc.stdout], [], [], 300)[0] or not proc.stdout.readline():
            proc.kill()
            raise RuntimeError("the fuzz worker did not start (imports failed or took over 300 s)")
        return proc

    def load(self, path: Path) -> dict[str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], self.timeout)[0]:
            self.close()
            return {"outcome": "hang", "detail": f"no answer in {self.timeout:.0f} s"}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return {"outcome": "crash", "detail": f"worker died (exit {code}; memory limit {MEMORY_LIMIT >> 30} GiB?)"}
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def run_cases(
    root: Path,
    bases: dict[str, list[Base]],
    per_format: int,
    seed: int,
    timeout: float,
    formats: tuple[str, ...] = FORMATS,
    on_case: Any = None,
) -> dict[str, list[dict[str, str]]]:
    """Make and load `per_format` mutated cases per format; return each format's answers (with kind, path)."""
    import shutil

    rng = random.Random(seed)
    runner = Runner(timeout)
    results: dict[str, list[dict[str, str]]] = {f: [] for f in formats}
    try:
        for fmt in formats:
            for i in range(per_format):
                base = rng.choice(bases[fmt])
                out = root / f"case-{fmt}-{i}{_SUFFIX[fmt]}"
                kind = make_case(base, rng, out)
                answer = {**runner.load(out), "kind": kind, "path": str(out), "base": base.path.name}
                results[fmt].append(answer)
                if on_case is not None:
                    on_case(fmt, answer)
                if answer["outcome"] in ("clean", "accepted"):  # keep the findings for a look
                    shutil.rmtree(out) if out.is_dir() else out.unlink()
    finally:
        runner.close()
    return results
