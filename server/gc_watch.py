"""How long Python's cyclic garbage collector stops this process (it pauses every task at once).

A front door holding thousands of sockets has millions of objects; a full
collection walks them all. :class:`GcWatch` records each collection's
duration from ``gc.callbacks``, so the pauses show in the process's counters.
"""

from __future__ import annotations

import asyncio
import gc
import time


class GcWatch:
    """Counts collections per generation and keeps the longest and total pause (ms)."""

    def __init__(self):
        self.collections = [0, 0, 0]
        self.longest_ms = 0.0
        self.total_ms = 0.0
        self._started = 0.0

    def __enter__(self) -> "GcWatch":
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause_ms = (time.perf_counter() - self._started) * 1000
        self.collections[info["generation"]] += 1
        self.longest_ms = max(self.longest_ms, pause_ms)
        self.total_ms += pause_ms

    def stats(self) -> dict:
        return {"gc_collections": list(self.collections), "gc_longest_pause_ms": round(self.longest_ms, 1),
                "gc_total_pause_ms": round(self.total_ms, 1)}


async def freeze_survivors(every_s: float = 10.0, full_every_s: float = 3600.0) -> None:
    """Every ``every_s``, collect the young generations and move every surviving object out of the
    collector's reach (``gc.freeze``), so a full collection walks only what is newer than that.

    Without it, a front door with 10,000 sockets paused for 1.5-3 s every ten seconds or so (see
    ``bench/RESULTS.md``). Young collections also run 10x less often than Python's default (every
    7,000 allocations net, not 700): each one is still short. The price: a reference cycle that
    becomes garbage after it was frozen waits for the hourly ``full_every_s`` collection of
    everything, which pauses like before.
    """
    gc.set_threshold(7_000, 10, 10)
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        if time.monotonic() - last_full >= full_every_s:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        else:
            gc.collect(1)
        gc.freeze()
