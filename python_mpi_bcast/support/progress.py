"""A small progress bar for long packs: drawn on a terminal, silent in logs
and with --quiet.  (No dependency: one line of text redrawn with \\r.)"""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    def __init__(self, label: str, stream=None, enabled: bool | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = 0
        self.done = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def start(self, total: int) -> None:
        self.total = max(total, 1)
        self.t0 = time.monotonic()
        self._draw(force=True)

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        frac = min(1.0, self.done / self.total) if self.total else 0.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        rate = self.done / max(now - self.t0, 1e-6) / 1e6
        self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}% {rate:7.1f} MB/s")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.done = self.total
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
