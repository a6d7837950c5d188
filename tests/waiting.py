"""Waiting on conditions, never on the clock's luck: the one helper every test waits with.

A test that waits for something to happen polls a condition until it holds,
with a deadline generous enough for a loaded 2-core machine (load average 20+):
a passing test waits only as long as the condition takes, so a generous
deadline costs nothing, while a short one turns a slow machine into a failure.
"""

from __future__ import annotations

import asyncio
import inspect
import time

#: Deadline for a condition that normally holds within a second or two (a message, a notification).
DEADLINE_S = 60.0
#: Deadline for conditions behind process or cluster start-up (a Ray node registering, a server process).
START_DEADLINE_S = 300.0


class NotYet(AssertionError):
    """The condition did not hold before the deadline (an AssertionError: the test fails, naming it)."""

    @classmethod
    def of(cls, condition, what: str, timeout_s: float, last_value) -> "NotYet":
        name = what or getattr(condition, "__name__", "condition")
        return cls(f"{name} not within {timeout_s:g} s (last value: {last_value!r})")


async def eventually(condition, timeout_s: float = DEADLINE_S, interval_s: float = 0.05, what: str = ""):
    """Poll ``condition()`` (a plain or async callable) until it returns something truthy, and return that.

    Raises ``NotYet`` naming ``what`` and the last value seen once ``timeout_s`` has passed; an exception
    raised by the condition itself propagates at once (a broken check is not retried).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise NotYet.of(condition, what, timeout_s, value)
        await asyncio.sleep(interval_s)


def eventually_sync(condition, timeout_s: float = DEADLINE_S, interval_s: float = 0.05, what: str = ""):
    """``eventually`` for code without an event loop (threads, subprocess orchestration)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise NotYet.of(condition, what, timeout_s, value)
        time.sleep(interval_s)
