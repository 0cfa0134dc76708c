"""The runner contract every backend implements (after Polygraphy's BaseRunner).

    with runner:                                   # activate() / deactivate()
        outputs = runner.infer({"tokens": ..., "x_att": ..., ...})   # name -> numpy array

Subclasses write `_activate`, `_infer`, `_deactivate`; the public methods check the call order and
the feed names, so every backend fails the same way on the same mistake.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType

import numpy as np

from rwkv_export.errors import RwkvExportError


class Runner:
    """One graph on one backend: infer(feeds) -> outputs, all numpy."""

    name = "runner"

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str]) -> None:
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.is_active = False

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RwkvExportError(f"{self.name}: infer() before activate() (use the runner as a context manager)")
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise RwkvExportError(f"{self.name}: missing input '{missing[0]}' (expected {', '.join(self.input_names)})")
        unknown = [n for n in feeds if n not in self.input_names]
        if unknown:
            raise RwkvExportError(f"{self.name}: unknown input '{unknown[0]}' (expected {', '.join(self.input_names)})")
        return self._infer(feeds)

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

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
