"""Progress of long packs: on a terminal a bar redrawn with \\r; elsewhere (a
batch job, CI, a log) a line every few seconds with bytes, files, rate and
time left, plus one when it starts and one when it ends; nothing with
--quiet.  (No dependency.)"""

from __future__ import annotations

import sys
import threading
import time

LOG_EVERY = 5.0  # seconds between lines when the stream is not a terminal


class Progress:
    def __init__(self, label: str, stream=None, enabled: bool | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = True if enabled is None else enabled
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.total = 0
        self.done = 0
        self.files_total = 0
        self.files = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def start(self, total: int, files: int = 0) -> None:
        self.total = max(total, 1)
        self.files_total = files
        self.t0 = time.monotonic()
        self._last = self.t0
        self._draw(force=True)

    def advance(self, n: int, files: int = 0) -> None:
        with self._lock:
            self.done += n
            self.files += files
            self._draw()

    def _line(self, now: float, final: bool = False) -> str:
        secs = max(now - self.t0, 1e-6)
        rate = self.done / secs
        files = f"{self.files}" + (f" of {self.files_total}" if self.files_total and not final
                                   else "")
        if final:
            return (f"{self.label}: done, {self.done / 1e6:.1f} MB, {self.files} files in "
                    f"{secs:.0f} s ({rate / 1e6:.1f} MB/s)")
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f} s" if rate > 0 and self.done else "?"
        return (f"{self.label}: {self.done / 1e6:.1f} of about {self.total / 1e6:.1f} MB, "
                f"{files} files, {rate / 1e6:.1f} MB/s, about {eta} left")

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if not force and now - self._last < 0.1:
                return
            self._last = now
            frac = min(1.0, self.done / self.total) if self.total else 0.0
            width = 30
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            rate = self.done / max(now - self.t0, 1e-6) / 1e6
            self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}% {rate:7.1f} MB/s")
        else:
            if not force and now - self._last < LOG_EVERY:
                return
            self._last = now
            self.stream.write(self._line(now) + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.done = max(self.done, self.total)
            self._draw(force=True)
            self.stream.write("\n")
        else:
            self.stream.write(self._line(time.monotonic(), final=True) + "\n")
        self.stream.flush()
