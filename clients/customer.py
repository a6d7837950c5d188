"""An async customer app: follows its orders' status events and the driver's position.

It remembers the last sequence number seen per order and, after any
reconnect, resubscribes from there: no status event is ever missed.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import wire
from clients.ws import Link, ws_url


class CustomerClient:
    def __init__(self, base_url: str, token: str, **link_options):
        self.link = Link(ws_url(base_url, "/v1/ws/customer", token), on_connect=self._resubscribe, **link_options)
        self.last_seq: dict[int, int] = {}
        self.events: dict[int, list[dict]] = defaultdict(list)
        self.positions: dict[int, list[dict]] = defaultdict(list)
        self.errors: list[dict] = []
        self.changed = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> "CustomerClient":
        await self.link.start()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self, graceful: bool = True) -> None:
        """Hang up (``graceful=False``: drop the connection without the closing handshake)."""
        if self._reader is not None:
            self._reader.cancel()
        await self.link.stop(graceful)

    async def follow(self, order_id: int) -> None:
        """Receive this order's status events from the beginning, and its driver's position."""
        self.last_seq.setdefault(order_id, 0)
        await self.link.send(wire.Subscribe(order_id=order_id, after_seq=self.last_seq[order_id]))

    async def _resubscribe(self) -> None:
        for order_id, seq in list(self.last_seq.items()):
            await self.link.send(wire.Subscribe(order_id=order_id, after_seq=seq))

    async def _read(self) -> None:
        while True:
            message = await self.link.inbox.get()
            kind = message.get("type")
            if kind == "status":
                order_id, seq = message["order_id"], message["seq"]
                if seq == self.last_seq.get(order_id, 0) + 1:
                    self.events[order_id].append(message)
                    self.last_seq[order_id] = seq
                # A duplicate after a resume is ignored; a gap cannot happen (the server fills it).
            elif kind == "driver_position":
                self.positions[message["order_id"]].append({**message, "received_at": time.time()})
            elif kind == "error":
                self.errors.append(message)
            self.changed.set()

    def statuses(self, order_id: int) -> list[str]:
        """The order's statuses, one per lifecycle event (``estimate`` events change none)."""
        return [e["status"] for e in self.events[order_id] if e["event"] != "estimate"]

    def eta(self, order_id: int) -> dict | None:
        """The order's latest delivery estimate (``{dropoff_at, dropoff_early, dropoff_late, ...}``), if any."""
        events = self.events[order_id]
        return events[-1].get("eta") if events else None

    async def wait_for(self, predicate, timeout_s: float = 30.0) -> None:
        """Wait until ``predicate(self)`` holds."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError("condition not met in time")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass
