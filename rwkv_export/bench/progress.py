"""The progress interface a benchmark run reports to (kept import-light for the CLI)."""

from __future__ import annotations


class Progress:
    """What the CLI shows; the default shows nothing."""

    def stage(self, message: str) -> None:
        pass

    def total(self, n: int) -> None:
        pass

    def tick(self) -> None:
        pass
