"""Overload protection for the event loop: frame readers take turns with everything else.

Reading a buffered websocket frame never suspends, so under a flood of GPS
the readers could keep the loop busy for seconds, and the GPS flushes to the
cells, HTTP requests and status events would wait behind them. The guard's
heartbeat runs every ``tick_s``; a reader that finds it has not run for
``budget_s`` queues until a heartbeat releases it. Each heartbeat releases at
most ``release_per_beat`` readers, oldest first, so ten thousand sockets do not
all wake at once; while readers are queued the heartbeat comes back at the
loop's next turn instead of after ``tick_s``, so the CPU never idles with
frames waiting. Unread frames stay in the kernel's socket buffers, so a
flooding client is slowed by TCP itself. Under normal load the heartbeat is
always fresh and a reader pays one clock read a frame.
"""

from __future__ import annotations

import asyncio
import collections
import time


class LoopGuard:
    """Frame readers call :meth:`turn` before each frame; :meth:`run` is the heartbeat task."""

    def __init__(self, budget_s: float = 0.02, tick_s: float = 0.01, release_per_beat: int = 256):
        self.budget_s = budget_s
        self.tick_s = tick_s
        self.release_per_beat = release_per_beat
        self.beat = time.monotonic()
        self.queued: collections.deque[asyncio.Future] = collections.deque()
        self.waits = 0

    async def run(self) -> None:
        while True:
            self.beat = time.monotonic()
            released = 0
            while self.queued and released < self.release_per_beat:
                waiter = self.queued.popleft()
                if not waiter.done():  # a cancelled reader (its socket closed) takes no turn
                    waiter.set_result(None)
                    released += 1
            # Readers still queued go on at the next turn of the loop, after whatever else is ready:
            # sleeping a whole tick would leave the CPU idle while frames wait.
            await asyncio.sleep(0 if self.queued else self.tick_s)

    def overdue(self) -> bool:
        """Whether the loop has been busy past the budget (a reader should then :meth:`turn`)."""
        return time.monotonic() - self.beat > self.budget_s

    async def turn(self) -> None:
        """Return at once unless the loop has been busy past the budget; then wait to be released."""
        if self.overdue():
            waiter = asyncio.get_running_loop().create_future()
            self.queued.append(waiter)
            self.waits += 1
            await waiter
