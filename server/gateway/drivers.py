"""Driver sessions: attaching and detaching sockets (one live session per driver in the fleet), the
``welcome``, answering commands (retry-safe by command id), messages from cells, and hand-over between cells."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import wire
from actors.cell import UNAVAILABLE, Rehome, cell_of_point
from dispatch.movement import Fix
from dispatch.routing import Routing, hold_after_borrow, route_cell_message
from server.gateway.cells import cell_gone_errors
from server.gateway.outbox import Outbox
from store.orders import ACTIVE_ORDER
from wire import error_frame

log = logging.getLogger("hexdispatch.gateway")

#: How many answered command ids are remembered per driver (a repeat of one gets the same answer).
ANSWERS_KEPT = 64
#: How many drivers a front door remembers answers and departed cells for.
DRIVERS_REMEMBERED = 100_000


@dataclass(eq=False)
class DriverLink:
    driver_id: str
    outbox: Outbox
    capacity: int = 1
    home_cell: str | None = None
    last_handover_try: float = 0.0
    orders: set[int] = field(default_factory=set)
    position_sent_at: dict[int, float] = field(default_factory=dict)
    attached_at: float = field(default_factory=time.time)
    last_fix: Fix | None = None
    """The last fix taken (not refused): where the next one is judged from."""

def remember(memory: OrderedDict, key: str, value):
    """Store ``value`` under ``key`` as the most recent of at most ``DRIVERS_REMEMBERED`` entries; returns it."""
    memory.pop(key, None)
    memory[key] = value
    if len(memory) > DRIVERS_REMEMBERED:
        memory.popitem(last=False)
    return value


class DriverSessions:
    """The drivers connected here (``drivers``), what they were answered, and where they went, for :class:`Gateway`."""

    def _init_drivers(self) -> None:
        """No driver connected or remembered yet."""
        self.drivers: dict[str, DriverLink] = {}
        #: Per driver, the replies to its last ``ANSWERS_KEPT`` commands by id (kept across its reconnects here),
        #: for the ``DRIVERS_REMEMBERED`` drivers seen last.
        self.answered: OrderedDict[str, OrderedDict[str, list]] = OrderedDict()
        #: The cell of each driver whose socket closed here (the last ``DRIVERS_REMEMBERED``): where its state is
        #: asked for when it reconnects (its ``welcome``), even if it held no order.
        self.departed_cells: OrderedDict[str, str] = OrderedDict()

    async def attach_driver(self, driver_id: str, outbox: Outbox) -> DriverLink:
        """A driver's socket opened here; its open jobs (if any) are found in Postgres."""
        link = DriverLink(driver_id, outbox)
        previous = self.drivers.get(driver_id)
        if previous is not None:
            previous.outbox.close()  # the newest connection wins
            link.home_cell, link.orders, link.last_fix = previous.home_cell, previous.orders, previous.last_fix
        else:
            link.home_cell = self.departed_cells.pop(driver_id, None)
        self.drivers[driver_id] = link
        self.broker.publish("sessions", {"driver_id": driver_id, "gateway": self.id, "at": link.attached_at})
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO drivers (id, vehicle, capacity) VALUES ($1, 'car', 1) ON CONFLICT DO NOTHING", driver_id
            )
            capacity = await conn.fetchval("SELECT capacity FROM drivers WHERE id = $1", driver_id)
            rows = await conn.fetch(
                f"""SELECT o.id, r.latitude, r.longitude FROM orders o JOIN restaurants r ON r.id = o.restaurant_id
                   WHERE o.driver_id = $1 AND {ACTIVE_ORDER}""",
                driver_id,
            )
        link.capacity = capacity or 1
        for row in rows:
            link.orders.add(row["id"])
            link.home_cell = cell_of_point(row["latitude"], row["longitude"], self.params.cell_res)
        return link

    def detach_driver(self, link: DriverLink) -> None:
        """The socket closed; the cell notices the silence and acts after its heartbeat TTL."""
        link.outbox.close()
        if self.drivers.get(link.driver_id) is link:
            del self.drivers[link.driver_id]
            if link.home_cell is not None:
                remember(self.departed_cells, link.driver_id, link.home_cell)

    def _on_session(self, message: dict) -> None:
        """A driver opened a socket on another front door: close its older socket here."""
        if message["gateway"] == self.id:
            return
        link = self.drivers.get(message["driver_id"])
        # Announcements cross in flight when two sockets open at once: the newer one wins everywhere.
        if link is not None and link.attached_at < message["at"]:
            log.info("driver %s reconnected to %s; closing its socket here", link.driver_id, message["gateway"])
            del self.drivers[link.driver_id]
            link.outbox.close()

    async def welcome(self, link: DriverLink) -> wire.Welcome:
        """The ``welcome`` of a driver's new socket: its live state in its cell (offer, job), its undelivered
        orders and the server's time."""
        view = None
        if link.home_cell is not None:
            try:
                view = await self.call_cell(link.home_cell, "driver_view", link.driver_id)
            except Exception:  # the cell is restarting: the driver learns its state from the next frames
                log.warning("welcome of %s: cell %s did not answer", link.driver_id, link.home_cell, exc_info=True)
        view = view or {"state": "offline", "offer": None, "job": None}
        return wire.Welcome(link.driver_id, wire.PROTOCOL_VERSION, time.time(), view["state"], sorted(link.orders),
                            view["offer"], view["job"])

    async def answer_driver(self, link: DriverLink, message: wire.Command) -> list[wire.ServerFrame]:
        """The replies to a driver's command, each naming it (``re``). A repeat of a command ``id`` this front
        door already answered for the driver gets the same replies again, without acting twice."""
        answered = remember(self.answered, link.driver_id, self.answered.get(link.driver_id) or OrderedDict())
        if message.id is not None and message.id in answered:
            answered.move_to_end(message.id)
            return answered[message.id]
        if isinstance(message, wire.Ping):
            replies = [wire.Pong(message.id, time.time())]
        elif isinstance(message, wire.GoOnline):
            replies = [wire.Ack("online", message.id)]
        else:
            fields = message.model_dump(exclude={"type", "id"})
            replies = [replace(reply, re=message.id)
                       for reply in await self.driver_says(link, message.type, fields)]
        if message.id is not None and not any(isinstance(r, wire.Error) and r.retryable for r in replies):
            answered[message.id] = replies  # a retryable refusal is tried again when repeated
            if len(answered) > ANSWERS_KEPT:
                answered.popitem(last=False)
        return replies

    async def driver_says(self, link: DriverLink, kind: str, fields: dict) -> list[wire.ServerFrame]:
        """Route a driver's reply to its cell; returns frames for the driver (errors, or an ack)."""
        if link.home_cell is None:
            return [error_frame("no_position", "send a GPS fix first")]
        # A fix still waiting for the next flush goes first, so the cell knows the driver.
        fix = self.fixes[link.home_cell].pop(link.driver_id, None)
        try:
            replies = await self.call_cell(link.home_cell, "driver_message", self.id, link.driver_id, kind,
                                           fields, fix)
        except Exception:  # a cell restarting or failing: the driver may retry, its socket stays open
            log.warning("driver %s %s: cell %s failed", link.driver_id, kind, link.home_cell, exc_info=True)
            return [UNAVAILABLE]
        for reply in replies:
            log.info("driver %s %s %s refused by cell %s: %s", link.driver_id, kind, fields, link.home_cell, reply)
        if not replies and kind == "delivered":
            link.orders.discard(fields["order_id"])
        return replies or [wire.Ack(kind, **fields)]

    def _to_driver(self, driver_id: str, message: wire.ServerFrame | Rehome, cell_id: str) -> None:
        link = self.drivers.get(driver_id)
        kind = "rehome" if isinstance(message, Rehome) else message.type
        routing = route_cell_message(kind, cell_id, link.home_cell if link is not None else None,
                                     connected=link is not None, holds_orders=bool(link is not None and link.orders))
        if routing is Routing.FOLLOW_REHOME:
            self._moved(link, message.cell, "rehome")
            return
        if routing is Routing.POLL_BORROWER:
            self.cell(message.cell)  # poll the borrower even if the driver's socket is gone
            return
        if routing is Routing.DECLINE_OFFER:
            self._spawn(self.cell(cell_id).driver_message.remote(self.id, driver_id, "decline",
                                                                   {"offer_id": message.offer_id}))
            return
        if routing is Routing.ADOPT_THEN_DELIVER:
            self._moved(link, cell_id, kind)
        if kind == "assigned":
            if link is not None:
                link.orders |= {o["order_id"] for o in message.orders}
        elif kind == "cancelled" and link is not None:
            link.orders.discard(message.order_id)
        if link is not None:
            link.outbox.send(message)

    def _moved(self, link: DriverLink, cell_id: str, why: str) -> None:
        log.info("driver %s now in cell %s (was %s) by %s", link.driver_id, cell_id, link.home_cell, why)
        fix = self.fixes[link.home_cell].pop(link.driver_id, None)
        link.home_cell = cell_id
        if fix is not None:
            self.fixes[cell_id][link.driver_id] = fix
        self.cell(cell_id)
        # It was moved here for an order: do not hand it straight back by position.
        link.last_handover_try = hold_after_borrow(time.time(), self.params.handover_retry_s,
                                                   self.params.borrowed_hold_s)

    async def _handover(self, link: DriverLink, new_cell: str) -> None:
        old = link.home_cell
        handle = self.cell(old)
        try:
            moved = await handle.remove_driver.remote(link.driver_id)
        except cell_gone_errors():
            self._forget(old, handle)
            moved = True  # a cell that retired held no driver
        except Exception:
            log.warning("handover of %s from %s failed", link.driver_id, old, exc_info=True)
            return
        if moved and link.home_cell == old:
            log.info("driver %s handed over from %s to %s", link.driver_id, old, new_cell)
            link.home_cell = new_cell
            self.fixes[old].pop(link.driver_id, None)
            self.cell(new_cell)
