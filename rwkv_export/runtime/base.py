"""The runner contract every backend implements (after Polygraphy's BaseRunner).

    with runner:                                   # activate() / deactivate()
        outputs = runner.infer({"tokens": ..., "x_att": ..., ...})   # name -> numpy array

A runner is one graph on one backend, described by the manifest's tensor specs (names, dtypes,
shapes with symbolic dims, roles). Subclasses write `_activate`, `_infer`, `_deactivate`; the
public methods check the call order and every feed (name, dtype, shape, symbolic dims bound the
same way across inputs, token ids inside the vocabulary), so every backend fails the same way, in
one line, on the same mistake. Loaders (loaders.py) make what a runner runs; runners only run it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from rwkv_export.errors import RwkvExportError, check_token_ids
from rwkv_export.manifest import TensorSpec


def _spec(item: TensorSpec | str) -> TensorSpec | None:
    return item if isinstance(item, TensorSpec) else None


class Runner:
    """One graph on one backend: infer(feeds) -> outputs, all numpy."""

    name = "runner"

    def __init__(self, inputs: Sequence[TensorSpec | str], outputs: Sequence[TensorSpec | str], vocab_size: int | None = None) -> None:
        self.input_names = [t.name if isinstance(t, TensorSpec) else t for t in inputs]
        self.output_names = [t.name if isinstance(t, TensorSpec) else t for t in outputs]
        self.input_specs = {t.name: t for t in inputs if isinstance(t, TensorSpec)}
        self.output_specs = [t for t in outputs if isinstance(t, TensorSpec)]
        self.vocab_size = vocab_size
        self.is_active = False

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feeds: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        if not self.is_active:
            raise RwkvExportError(f"{self.name}: infer() before activate() (use the runner as a context manager)")
        self.check_feeds(feeds)
        return self._infer(feeds, **options)

    def required_inputs(self, feeds: Mapping[str, Any]) -> list[str]:
        """The inputs a call must feed (a runner holding its state on the device needs fewer)."""
        return self.input_names

    def check_feeds(self, feeds: Mapping[str, Any]) -> None:
        """One-line errors for a missing or unknown input, a wrong dtype or shape, a token id out of range."""
        expected = ", ".join(self.input_names)
        missing = [n for n in self.required_inputs(feeds) if n not in feeds]
        if missing:
            raise RwkvExportError(f"{self.name}: missing input '{missing[0]}' (expected {expected})")
        unknown = [n for n in feeds if n not in self.input_names]
        if unknown:
            raise RwkvExportError(f"{self.name}: unknown input '{unknown[0]}' (expected {expected})")
        bound: dict[str, tuple[int, str]] = {}
        for name, value in feeds.items():
            spec = self.input_specs.get(name)
            if spec is not None:
                self._check_one(spec, value, bound)

    def _check_one(self, spec: TensorSpec, value: Any, bound: dict[str, tuple[int, str]]) -> None:
        shape, dtype = _shape_dtype(value, f"{self.name}: input '{spec.name}'")
        if dtype is not None and dtype != np.dtype(spec.dtype):
            raise RwkvExportError(f"{self.name}: input '{spec.name}' has dtype {dtype}, expected {spec.dtype}")
        if len(shape) != len(spec.shape):
            raise RwkvExportError(f"{self.name}: input '{spec.name}' has shape {list(shape)}, expected {list(spec.shape)}")
        for got, want in zip(shape, spec.shape):
            if isinstance(want, int) and got != want:
                raise RwkvExportError(f"{self.name}: input '{spec.name}' has shape {list(shape)}, expected {list(spec.shape)}")
            if isinstance(want, str):
                if got < 1:
                    raise RwkvExportError(f"{self.name}: input '{spec.name}' has an empty '{want}' dim (shape {list(shape)})")
                first = bound.setdefault(want, (got, spec.name))
                if first[0] != got:
                    raise RwkvExportError(f"{self.name}: input '{spec.name}' has {want} {got} but '{first[1]}' has {want} {first[0]}")
        if spec.role == "tokens" and self.vocab_size is not None and isinstance(value, np.ndarray) and value.size:
            check_token_ids(value, self.vocab_size, f"{self.name}: ", scope="")

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.deactivate()

    # --- for subclasses ---
    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _infer(self, feeds: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        raise NotImplementedError


ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(double)": "float64",
}


def _shape_dtype(value: Any, what: str) -> tuple[tuple[int, ...], np.dtype | None]:
    """(shape, dtype) of a numpy array or an ORT OrtValue (device state under CUDA)."""
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype
    shape = getattr(value, "shape", None)
    if callable(shape):  # OrtValue
        kind = ORT_TYPES.get(value.data_type())
        return tuple(shape()), np.dtype(kind) if kind else None
    raise RwkvExportError(f"{what} is a {type(value).__name__}, expected a numpy array")


def host_array(value: Any) -> np.ndarray:
    """numpy of a state or output value: numpy arrays as they are, device values (ORT OrtValues under
    CUDA) copied back through their .numpy()."""
    return value if isinstance(value, np.ndarray) else np.asarray(value.numpy())


def state_to_host(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{name: numpy} of a state whose values may live on a device."""
    return {name: host_array(value) for name, value in state.items()}
