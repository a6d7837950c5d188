"""Counters written to a file by a thread of their own, for monitors that cannot wait for HTTP.

A front door flooded with frames answers HTTP late, exactly when its
counters matter most; a thread that writes them (with the time they were
read) every fraction of a second keeps them observable. The file is
replaced atomically, so a reader never sees half of it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

import orjson


class StatsFile:
    """Writes ``read()`` plus ``at`` (unix s) and ``pid`` to ``path`` every ``every_s`` until stopped."""

    def __init__(self, path: str | os.PathLike, read: Callable[[], dict], every_s: float = 0.2):
        self.path = os.fspath(path)
        self.read = read
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-file", daemon=True)

    def start(self) -> "StatsFile":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def write(self) -> None:
        partial = f"{self.path}.tmp"
        with open(partial, "wb") as fh:
            fh.write(orjson.dumps({**self.read(), "at": time.time(), "pid": os.getpid()}))
        os.replace(partial, self.path)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.write()
            self._stop.wait(self.every_s)
