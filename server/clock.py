"""Where the server's "now" comes from. Tests move time through a file; production uses the system."""

from __future__ import annotations

import time
from pathlib import Path


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class FileClock:
    """Reads "now" (ms since the epoch, UTC) from a file the tests write. Never used in production."""

    def __init__(self, path: str):
        self._path = Path(path)

    def now_ms(self) -> int:
        return int(self._path.read_text().strip())


def make_clock(file: str):
    return FileClock(file) if file else SystemClock()
