"""A progress line for long passes, written to the user's terminal (never to a pipe or file)."""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """Samples, batches per second and ETA on one rewritten line of the user's terminal.

    The command line names the terminal its stderr is attached to before any audit
    starts (``Runtime`` options ``progress_terminal``): while models are audited, fd 2
    itself points at /dev/null to keep native libraries quiet, and workers of ``-j``
    run in other processes. No terminal, no progress.
    """

    def __init__(self, total: int | None, stream: TextIO, every: float = 0.5) -> None:
        self.total = total
        self.stream = stream
        self.every = every
        self.started = time.perf_counter()
        self.shown = 0.0

    @classmethod
    def on_terminal(cls, terminal: str | None, total: int | None) -> "Progress | None":
        if not terminal:
            return None
        try:
            return cls(total, open(terminal, "w", encoding="utf-8"))
        except OSError:  # the terminal went away: carry on without progress
            return None

    def update(self, samples: int, batches: int) -> None:
        now = time.perf_counter()
        if now - self.shown < self.every:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-9)
        line = f"bnaudit: statistics: {samples} samples, {batches} batches, {batches / elapsed:.1f} batches/s"
        if self.total:
            remaining = (self.total - samples) * elapsed / max(samples, 1)
            line += f", ETA {remaining:.0f}s"
        self.stream.write("\r" + line + "\033[K")
        self.stream.flush()

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
        self.stream.close()
