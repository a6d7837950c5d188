"""An async driver app: streams GPS, receives offers, reports its progress."""

from __future__ import annotations

import asyncio
import collections
import time

import wire
from clients.ws import Link, reconnect_delay, ws_url

#: A refusal of a job step sent again: an earlier attempt was recorded and only its ack was lost on the way.
ALREADY_RECORDED = frozenset({"illegal_transition", "unknown_job", "unknown_order"})
#: Refusals of GPS fixes, which arrive between a step and its answer and are not that answer.
GPS_REFUSALS = frozenset({"implausible_jump", "outside_service_area", "cell_capacity", "rate_limited",
                          "invalid_message"})


class StepRefused(Exception):
    """The server refused a job step (the error frame's ``code`` and ``message``)."""

    def __init__(self, frame: dict):
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame


class DriverClient:
    """One driver's connection. Messages from the server arrive in ``inbox`` (a queue of dicts)."""

    def __init__(self, base_url: str, token: str, **link_options):
        self.link = Link(ws_url(base_url, "/v1/ws/driver", token), **link_options)
        self.seq = 0
        self.errors: list[dict] = []
        self.sent = 0
        self._set_aside: collections.deque[dict] = collections.deque()  # read by ``confirm``, for ``next``

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

    async def confirm(self, kind: str, deadline_s: float = 300.0, answer_s: float = 15.0, **fields) -> dict:
        """Send a job step (``at_restaurant``/``picked_up`` with ``job_id``, ``delivered`` with ``order_id``) until
        the server has recorded it, as a driver app must: nothing a driver reports may be lost to a fault.

        The step is sent again, after a jittered back-off, when the answer is ``unavailable`` (Postgres or the
        cell unreachable), when the socket reconnected meanwhile, or when no answer comes within ``answer_s``
        (a front door died with it). Returns the ``ack``, or, for a step sent again, a refusal in
        ``ALREADY_RECORDED`` (the first attempt was recorded, its ack lost). Raises :class:`StepRefused` for
        any other refusal, ``asyncio.TimeoutError`` after ``deadline_s``. Other messages meanwhile are kept
        for :meth:`next`.
        """
        deadline = time.monotonic() + deadline_s
        attempt = 0
        # One message id for every attempt: a repeat the server already answered is not acted on twice.
        step = wire.DRIVER_MESSAGES.validate_python({"type": kind, "id": self.message_id(), **fields})
        while True:
            connections = self.link.connections
            await self.link.send(step)
            answer = await self._answer_to(kind, fields, min(answer_s, max(0.0, deadline - time.monotonic())),
                                           connections)
            if answer is not None and answer["type"] == "ack":
                return answer
            if answer is not None and answer.get("code") in ALREADY_RECORDED and attempt > 0:
                return answer
            if answer is not None and answer.get("code") != "unavailable":
                raise StepRefused(answer)
            if time.monotonic() >= deadline:
                raise asyncio.TimeoutError(f"{kind} {fields} not recorded within {deadline_s:g} s")
            await asyncio.sleep(reconnect_delay(attempt, busy=True, min_backoff_s=0.1, max_backoff_s=5.0))
            attempt += 1

    async def _answer_to(self, kind: str, fields: dict, within_s: float, connections: int) -> dict | None:
        """The ack of ``kind`` or the error frame answering it; None if none came within ``within_s`` or the
        socket reconnected (the step may not have arrived)."""
        deadline = time.monotonic() + within_s
        while (remaining := deadline - time.monotonic()) > 0 and self.link.connections == connections:
            try:
                message = await asyncio.wait_for(self.inbox.get(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                continue
            if message.get("type") == "ack" and message.get("of") == kind and all(
                    message.get(name) == value for name, value in fields.items()):
                return message
            if message.get("type") == "error" and message.get("code") not in GPS_REFUSALS:
                return message
            if message.get("type") == "ack":
                continue  # the ack of an earlier resend of another step
            self._set_aside.append(message)
        return None

    async def next(self, *types: str, timeout_s: float = 10.0) -> dict:
        """The next message of one of ``types`` (others are skipped); TimeoutError if none comes."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"no {types} within {timeout_s}s")
            if self._set_aside:
                message = self._set_aside.popleft()
            else:
                message = await asyncio.wait_for(self.inbox.get(), remaining)
            if not types or message.get("type") in types:
                return message
            if message.get("type") == "error":
                self.errors.append(message)  # kept for whoever audits the session
