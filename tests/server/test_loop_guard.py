"""``server.loop_guard``: frame readers give the loop back once it has been busy past the budget."""

import asyncio
import time

from server.loop_guard import LoopGuard
from tests.waiting import DEADLINE_S, eventually


async def test_a_quiet_loop_lets_readers_through_without_waiting():
    guard = LoopGuard(budget_s=0.05, tick_s=0.01)
    heartbeat = asyncio.create_task(guard.run())
    try:
        for _ in range(100):
            await guard.turn()
        assert guard.waits == 0
    finally:
        heartbeat.cancel()


async def test_busy_readers_queue_and_other_tasks_get_their_turn():
    """Readers that never suspend on their own still let a timer task run every few budgets."""
    guard = LoopGuard(budget_s=0.01, tick_s=0.005, release_per_beat=4)
    heartbeat = asyncio.create_task(guard.run())
    gaps: list[float] = []
    stop = asyncio.Event()

    async def reader():
        while not stop.is_set():
            await guard.turn()
            spin_until = time.monotonic() + 0.001  # one frame's work, without suspending
            while time.monotonic() < spin_until:
                pass

    async def ticker():
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    readers = [asyncio.create_task(reader()) for _ in range(50)]
    tick = asyncio.create_task(ticker())
    try:
        # Without the guard these readers never suspend: the ticker would not run once.
        await eventually(lambda: len(gaps) >= 10, what="ten turns of the ticker")
    finally:
        stop.set()
        await asyncio.gather(*readers, tick)
        heartbeat.cancel()
    assert guard.waits > 0


async def test_a_cancelled_reader_does_not_use_up_a_release():
    guard = LoopGuard(budget_s=0.0, tick_s=0.01, release_per_beat=1)
    guard.beat = time.monotonic() - 1  # the loop looks busy: every reader queues
    gone = asyncio.create_task(guard.turn())
    waiting = asyncio.create_task(guard.turn())
    await asyncio.sleep(0)
    gone.cancel()
    heartbeat = asyncio.create_task(guard.run())
    await asyncio.wait_for(waiting, DEADLINE_S)
    heartbeat.cancel()
