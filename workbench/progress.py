"""A small progress bar with ETA on stderr (one line per update when not a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str = "", *, stream=None, enabled: bool = True):
        self.total, self.desc, self.n = int(total), desc, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def update(self, n: int = 1, info: str = "") -> None:
        self.n += n
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.n * (self.total - self.n) if self.n else float("nan")
        width = 24
        filled = int(width * self.n / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = f"{self.desc} [{bar}] {self.n}/{self.total} {elapsed:5.1f}s eta {eta:5.1f}s {info}"
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
            if self.n >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
