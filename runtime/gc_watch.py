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
    """Per generation: collections, objects freed, and the longest and total pause (ms)."""

    def __init__(self, on_pause=None):
        """``on_pause(generation, seconds)`` is called after each collection (a metrics histogram)."""
        self.on_pause = on_pause
        self.collections = [0, 0, 0]
        self.freed = [0, 0, 0]
        self.longest_ms = [0.0, 0.0, 0.0]
        self.total_ms = [0.0, 0.0, 0.0]
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
        generation = info["generation"]
        self.collections[generation] += 1
        self.freed[generation] += info.get("collected", 0)
        self.longest_ms[generation] = max(self.longest_ms[generation], pause_ms)
        self.total_ms[generation] += pause_ms
        if self.on_pause is not None:
            self.on_pause(generation, pause_ms / 1000)

    def stats(self) -> dict:
        """Lists indexed by generation (0, 1, 2)."""
        return {"gc_collections": list(self.collections), "gc_freed": list(self.freed),
                "gc_longest_pause_ms": [round(x, 1) for x in self.longest_ms],
                "gc_total_pause_ms": [round(x, 1) for x in self.total_ms]}


async def freeze_survivors(every_s: float = 1.0, full_every_s: float = 3600.0) -> None:
    """Every ``every_s``, collect the young generations and move every surviving object out of the
    collector's reach (``gc.freeze``), so a full collection walks only what is newer than that.

    Without it, a front door with 10,000 sockets paused for 1.5-3 s every ten seconds or so (see
    ``bench/RESULTS.md``). Young collections also run 10x less often than Python's default (every
    7,000 allocations net, not 700): each one is still short. The price: a reference cycle that
    becomes garbage after it was frozen waits for the hourly ``full_every_s`` collection of
    everything, which pauses like before.

    Why every second: each socket waiting for its next frame holds a fresh chain of about 16
    tracked objects (coroutines, futures, the last message), renewed with every frame. A young
    collection walks every chain renewed since the last freeze: at 10,000 sockets reporting
    every 5 s that was 160,000 objects and a 300 ms pause every 10 s; every second it is a
    tenth of that, for the same total work.
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
