"""What one socket has yet to receive: bounded by bytes and age, status events kept, positions latest-wins."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable


class Outbox:
    """What one socket has yet to receive, as encoded frames: reliable ones in order, positions latest-wins.

    Bounded by bytes queued and by the age of the oldest frame not yet handed to the socket (the one
    being written counts), whatever the transport does: past either bound the outbox *overflows*: it
    drops what it holds, takes nothing more and calls ``on_overflow`` (the socket closes with 1013; a
    customer resumes with ``after_seq``, so no status event is lost, only delayed).
    """

    def __init__(self, encode: Callable[[dict], bytes | str], max_bytes: int, max_age_s: float,
                 clock: Callable[[], float] = time.monotonic, counts: dict | None = None):
        self.encode = encode
        #: Frames dropped by overflows and unsent positions replaced by newer ones (the gateway's stats, shared).
        self.counts = counts if counts is not None else {"outbox_dropped_frames": 0, "positions_superseded": 0}
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.clock = clock
        self.reliable: deque[tuple[float, bytes | str]] = deque()  # (queued at, frame)
        self.positions: dict[object, tuple[float, bytes | str]] = {}
        self.queued_bytes = 0
        self.writing_since: float | None = None  # when the frame being written was queued
        self.wakeup = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self.on_overflow: Callable[[], None] | None = None
        self._room: asyncio.Event | None = None  # set while at most half the byte bound is queued

    def send(self, message: dict) -> None:
        if self.closed:
            return
        frame = self.encode(message)
        self.reliable.append((self.clock(), frame))
        self._queued(len(frame))

    def send_latest(self, key: object, message: dict) -> None:
        """Queue ``message`` in place of any unsent one under ``key`` (it keeps the older one's age)."""
        if self.closed:
            return
        frame = self.encode(message)
        previous = self.positions.get(key)
        if previous is None:
            self.positions[key] = (self.clock(), frame)
            self._queued(len(frame))
        else:
            self.positions[key] = (previous[0], frame)
            self.counts["positions_superseded"] += 1
            self._queued(len(frame) - len(previous[1]))

    def _queued(self, size: int) -> None:
        self.queued_bytes += size
        if self.queued_bytes > self.max_bytes:
            self.overflow()
        else:
            self.wakeup.set()

    def oldest(self) -> float | None:
        """When the oldest frame not yet handed to the socket was queued (None: nothing waits)."""
        oldest = self.writing_since
        if self.reliable:
            queued_at = self.reliable[0][0]
            oldest = queued_at if oldest is None else min(oldest, queued_at)
        if self.positions:
            queued_at = min(t for t, _ in self.positions.values())
            oldest = queued_at if oldest is None else min(oldest, queued_at)
        return oldest

    def check_age(self, now: float) -> bool:
        """Overflow if the oldest waiting frame is older than the bound; True if it did."""
        oldest = self.oldest()
        if not self.closed and oldest is not None and now - oldest > self.max_age_s:
            self.overflow()
            return True
        return False

    def overflow(self) -> None:
        self.overflowed = True
        self.counts["outbox_dropped_frames"] += len(self.reliable) + len(self.positions)
        self.close()
        if self.on_overflow is not None:
            self.on_overflow()

    def close(self) -> None:
        """Drop what is queued, take nothing more, and wake the writer so it closes the socket."""
        self.closed = True
        self.reliable.clear()
        self.positions.clear()
        self.queued_bytes = 0
        self.wakeup.set()
        if self._room is not None:
            self._room.set()

    async def room(self) -> None:
        """Return once at most half the byte bound is queued (or the outbox closed): a burst of many
        frames (a catch-up after a reconnect) goes at the pace the socket reads, without overflowing it."""
        while self.queued_bytes > self.max_bytes // 2 and not self.closed:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()

    def next_frame(self) -> bytes | str | None:
        """The next frame to write (reliable ones first, then positions), now counted as being written;
        None when nothing waits. Call :meth:`written` once the socket took it."""
        if self.reliable:
            queued_at, frame = self.reliable.popleft()
        elif self.positions:
            queued_at, frame = self.positions.pop(next(iter(self.positions)))
        else:
            self.wakeup.clear()
            return None
        self.queued_bytes -= len(frame)
        self.writing_since = queued_at
        if self._room is not None and self.queued_bytes <= self.max_bytes // 2:
            self._room.set()
        return frame

    def written(self) -> None:
        self.writing_since = None
