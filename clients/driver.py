"""An async driver app: streams GPS, receives offers, reports its progress."""

from __future__ import annotations

import asyncio
import time

import wire
from clients.ws import Link, ws_url


class DriverClient:
    """One driver's connection. Messages from the server arrive in ``inbox`` (a queue of dicts)."""

    def __init__(self, base_url: str, token: str, **link_options):
        self.link = Link(ws_url(base_url, "/v1/ws/driver", token), **link_options)
        self.seq = 0
        self.errors: list[dict] = []
        self.sent = 0

    def message_id(self) -> str:
        """A fresh id for the next command (a repeat of a command reuses its id)."""
        self.sent += 1
        return f"m{self.sent}"

    @property
    def inbox(self) -> asyncio.Queue:
        return self.link.inbox

    async def __aenter__(self) -> "DriverClient":
        await self.link.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self, graceful: bool = True) -> None:
        """Hang up (``graceful=False``: drop the connection without the closing handshake)."""
        await self.link.stop(graceful)

    async def gps(self, lat: float, lng: float, heading: float | None = None, speed: float | None = None) -> None:
        self.seq += 1
        await self.link.send(wire.Gps(lat=lat, lng=lng, heading=heading, speed=speed, t=int(time.time() * 1000),
                                      seq=self.seq))

    async def online(self) -> None:
        await self.link.send(wire.GoOnline(id=self.message_id()))

    async def offline(self) -> None:
        await self.link.send(wire.GoOffline(id=self.message_id()))

    async def accept(self, offer_id: str) -> None:
        await self.link.send(wire.AcceptOffer(offer_id=offer_id, id=self.message_id()))

    async def decline(self, offer_id: str) -> None:
        await self.link.send(wire.DeclineOffer(offer_id=offer_id, id=self.message_id()))

    async def at_restaurant(self, job_id: str) -> None:
        await self.link.send(wire.AtRestaurant(job_id=job_id, id=self.message_id()))

    async def picked_up(self, job_id: str) -> None:
        await self.link.send(wire.PickedUp(job_id=job_id, id=self.message_id()))

    async def delivered(self, order_id: int) -> None:
        await self.link.send(wire.Delivered(order_id=order_id, id=self.message_id()))

    async def next(self, *types: str, timeout_s: float = 10.0) -> dict:
        """The next message of one of ``types`` (others are skipped); TimeoutError if none comes."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"no {types} within {timeout_s}s")
            message = await asyncio.wait_for(self.inbox.get(), remaining)
            if not types or message.get("type") in types:
                return message
            if message.get("type") == "error":
                self.errors.append(message)  # kept for whoever audits the session
