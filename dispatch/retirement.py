"""When an idle cell actor may retire (and give its process back).

A cell is *empty* when nothing would be lost if it went away: no driver
online, no order, no offer, no job, no message waiting for a front door. It
may retire once it has been empty, with nothing arriving, for ``idle_s``. Pure:
the actor reports what arrived and whether it is empty, with the time.

The actor counts a write to Postgres in flight as not empty, and before it
retires asks Postgres (a sweep): an active order of the cell that memory
missed is taken in, and the cell stays (``actors.cell``).
"""

from __future__ import annotations


class IdleWatch:
    """Tracks how long a cell has been empty and quiet."""

    def __init__(self, idle_s: float, now: float):
        self.idle_s = idle_s
        self.quiet_since = now

    def arrived(self, now: float) -> None:
        """Something arrived (a fix, an order, a driver's message): the quiet period starts again."""
        self.quiet_since = max(self.quiet_since, now)

    def may_retire(self, empty: bool, now: float) -> bool:
        """Whether the cell may retire at ``now``: empty now, and empty and quiet for ``idle_s``."""
        if not empty:
            self.arrived(now)
            return False
        return now - self.quiet_since >= self.idle_s
