"""``runtime.gc_watch``: collector pauses are counted; survivors are frozen out of the collector's reach."""

import asyncio
import gc

from runtime.gc_watch import GcWatch, freeze_survivors
from tests.waiting import eventually


def test_collections_and_pauses_are_recorded():
    with GcWatch() as watch:
        cycle = [[]]
        cycle[0].append(cycle)
        del cycle
        gc.collect()
    stats = watch.stats()
    assert stats["gc_collections"][2] >= 1
    assert stats["gc_freed"][2] >= 2, "the cycle's two lists"
    assert stats["gc_total_pause_ms"][2] >= stats["gc_longest_pause_ms"][2] > 0


async def test_survivors_are_frozen_and_the_thresholds_restored_by_the_caller():
    thresholds = gc.get_threshold()
    survivors = [[i] for i in range(1000)]
    task = asyncio.create_task(freeze_survivors(every_s=0.01, full_every_s=3600))
    try:
        await eventually(lambda: gc.get_freeze_count() >= len(survivors), what="the survivors frozen")
    finally:
        task.cancel()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
