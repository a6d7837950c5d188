"""The front door's live side: sockets in this process, cell actors in Ray, events from Postgres.

One :class:`Gateway` per front-door process. It

* batches GPS fixes per cell and pushes each batch to its cell actor in one
  Ray call every ``gps_flush_s`` (never one call per fix; a cell still busy
  with its last batch gets the next one, coalesced, when it is done);
* long-polls every cell it has drivers in for messages to them (offers,
  assignments, cancellations) and writes them to the drivers' sockets;
* routes drivers' replies to the cell that holds their offer or job, and
  hands an idle driver over when it crosses into another cell;
* forwards order status events (Postgres ``LISTEN order_events``: every
  front door hears every event) to the customers following the order,
  without gaps (a missing sequence number is fetched from ``order_events``;
  the listening connection reconnects when lost, then fills every followed
  order from the table: ``server.listener``);
* publishes the assigned driver's position (latest wins, at most one per
  ``position_interval_s`` per order) on the broker (``server.broker``:
  in memory for one process, Redis for several), which brings it to the
  front doors whose customers follow that order;
* announces each driver's new socket on the broker, so its older socket on
  any front door is closed: a driver has one live session in the whole fleet.

Sockets are represented by :class:`Outbox` objects; a slow consumer loses
positions, never status events, and never slows anyone else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from actors.cell import (
    DEFAULT_CELL_RES, LIVE_ORDER_SQL, NAMESPACE, NEW_ORDER_FIELDS, UNAVAILABLE, actor_name, cell_actor_class,
    cell_of_point,
)
from dispatch.cell import CellParams, LiveOrder
from server.broker import LocalBroker, RedisBroker
from server.listener import ResilientListener

log = logging.getLogger("hexdispatch.gateway")

#: How long a starting front door waits for its status-event listener before serving anyway (seconds).
LISTEN_START_WAIT_S = 10.0
#: How long a gap in one order's status events is retried when filling it fails (seconds).
GAP_FILL_DEADLINE_S = 60.0


@dataclass(frozen=True)
class GatewayParams:
    cell_res: int = DEFAULT_CELL_RES
    """H3 resolution of the cell actors (see ``actors.cell``); every front door must agree on it."""
    gps_flush_s: float = 0.1
    """How often buffered GPS fixes are pushed to their cells (one Ray call per cell)."""
    poll_timeout_s: float = 5.0
    """How long one long-poll of a cell waits for messages."""
    position_interval_s: float = 1.0
    """Least time between two driver positions sent for one order."""
    handover_retry_s: float = 5.0
    """Least time between two attempts to hand a busy driver over."""
    borrowed_hold_s: float = 30.0
    """A driver borrowed by a neighbouring cell stays there at least this long (no hand-over back)."""
    max_backlog: int = 1000
    """Status events queued for one socket before it is closed (it resumes on reconnect)."""
    cell_tick_s: float = 0.25
    """Matching tick of each cell actor."""
    cell: CellParams = field(default_factory=CellParams)
    cell_resource: str = "cell_host"
    """Custom Ray resource of the nodes that may host cells (``ray_cluster.yaml``); used when the cluster has it."""


class Outbox:
    """What one socket has yet to receive: reliable messages in order, positions latest-wins."""

    def __init__(self, max_backlog: int):
        self.reliable: list[dict] = []
        self.positions: dict[object, dict] = {}
        self.wakeup = asyncio.Event()
        self.max_backlog = max_backlog
        self.overflowed = False
        self.closed = False

    def send(self, message: dict) -> None:
        if self.closed:
            return
        self.reliable.append(message)
        if len(self.reliable) > self.max_backlog:
            self.overflowed = True
        self.wakeup.set()

    def close(self) -> None:
        """Stop taking messages and wake the writer so it closes the socket."""
        self.closed = True
        self.wakeup.set()

    def send_latest(self, key: object, message: dict) -> None:
        if self.closed:
            return
        self.positions[key] = message
        self.wakeup.set()

    async def next_batch(self) -> list[dict]:
        """Wait for messages; reliable ones first, then the latest positions."""
        await self.wakeup.wait()
        self.wakeup.clear()
        batch, self.reliable = self.reliable, []
        batch += list(self.positions.values())
        self.positions.clear()
        return batch


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


@dataclass(eq=False)
class CustomerLink:
    customer_id: str
    outbox: Outbox
    last_seq: dict[int, int] = field(default_factory=dict)


def cell_placement(resource: str, cluster_resources: dict) -> dict:
    """Actor options placing cells on the nodes that offer ``resource``, if any node does.

    A cell asks for a small share of the resource, so a node offering N units
    hosts up to 1,000 x N cells, and cells are spread over those nodes (Ray's
    default would pack them onto one node until it is half full); without such
    nodes (one machine), cells go anywhere.
    """
    if cluster_resources.get(resource, 0) > 0:
        return {"resources": {resource: 0.001}, "scheduling_strategy": "SPREAD"}
    return {}


class Gateway:
    def __init__(self, dsn: str, pool, params: GatewayParams | None = None,
                 broker: LocalBroker | RedisBroker | None = None):
        self.id = f"gw-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.dsn = dsn
        self.pool = pool
        self.params = params or GatewayParams()
        self.broker = broker if broker is not None else LocalBroker()
        self.cells: dict[str, object] = {}
        self.pollers: dict[str, asyncio.Task] = {}
        self.fixes: dict[str, dict[str, tuple]] = defaultdict(dict)
        self.gps_in_flight: set[str] = set()  # cells that have not yet taken their last batch
        self.drivers: dict[str, DriverLink] = {}
        self.customers: dict[int, set[CustomerLink]] = defaultdict(set)
        self.tasks: set[asyncio.Task] = set()
        # Every front door hears every status event; after a lost connection, followers are filled from the table.
        self.listener = ResilientListener(dsn, {"order_events": self._on_notify}, on_connect=self._resync,
                                          name="status events")
        self.stats = {"gps_in": 0, "gps_fast": 0, "gps_batches": 0, "status_out": 0, "positions_out": 0,
                      "gps_to_cell_ms": 0.0}  # the oldest fix of the last batch, received until the cell took it
        self._flusher: asyncio.Task | None = None
        self._actor_class = cell_actor_class()
        self._placement: tuple[float, dict] = (-1e9, {})

    # Lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.listener.start()
        if not await self.listener.wait_connected(LISTEN_START_WAIT_S):
            log.warning("status events: not listening yet; followers catch up from order_events once it is")
        self.broker.subscribe("sessions", self._on_session)
        await self.broker.start()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def stop(self) -> None:
        for task in [self._flusher, *self.pollers.values(), *self.tasks]:
            if task is not None:
                task.cancel()
        await self.broker.stop()
        await self.listener.stop()

    def snapshot(self) -> dict:
        """This front door's counters (the admin API's view of the process)."""
        return {"gateway": self.id, "pid": os.getpid(), **self.stats, "drivers_connected": len(self.drivers),
                "customers_connected": len({c for followers in self.customers.values() for c in followers}),
                "cells_polled": len(self.pollers), "broker": type(self.broker).__name__,
                **({"broker_stats": self.broker.stats} if hasattr(self.broker, "stats") else {})}

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # Cells ---------------------------------------------------------------------------

    def cell(self, cell_id: str):
        """The actor of ``cell_id``, created on first use (shared by every front door)."""
        handle = self.cells.get(cell_id)
        if handle is None:
            handle = self._actor_class.options(
                name=actor_name(cell_id), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                **self._cell_placement(),
            ).remote(cell_id, self.dsn, self.params.cell, self.params.cell_tick_s)
            self.cells[cell_id] = handle
            self._spawn(self._ready(cell_id, handle))
        if cell_id not in self.pollers:
            self.pollers[cell_id] = asyncio.get_running_loop().create_task(self._poll_loop(cell_id))
        return handle

    def _cell_placement(self) -> dict:
        """Where new cells go (re-read every 30 s: cell-hosting nodes may join after we started)."""
        import ray

        read_at, placement = self._placement
        if time.monotonic() - read_at > 30.0:
            placement = cell_placement(self.params.cell_resource, ray.cluster_resources())
            self._placement = (time.monotonic(), placement)
        return placement

    async def _ready(self, cell_id: str, handle) -> None:
        try:
            await handle.ready.remote()
        except Exception:
            log.exception("cell %s failed to start", cell_id)

    async def _poll_loop(self, cell_id: str) -> None:
        from ray.exceptions import ActorDiedError

        while True:
            try:
                messages = await self.cells[cell_id].poll.remote(self.id, self.params.poll_timeout_s)
            except asyncio.CancelledError:
                raise
            except ActorDiedError:
                # Killed for good (cells restart on failure): forget it; the next use creates it anew.
                log.warning("cell %s is gone; it will be re-created when next needed", cell_id)
                self.cells.pop(cell_id, None)
                self.pollers.pop(cell_id, None)
                return
            except Exception:
                log.warning("poll of cell %s failed; retrying", cell_id, exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for driver_id, message in messages:
                self._to_driver(driver_id, message, cell_id)

    def _to_driver(self, driver_id: str, message: dict, cell_id: str) -> None:
        link = self.drivers.get(driver_id)
        kind = message.get("type")
        if kind == "rehome":
            # The cell holding the driver lent it to a neighbour: route it there from now on.
            if link is not None and link.home_cell == cell_id:
                self._moved(link, message["cell"], "rehome")
            else:
                self.cell(message["cell"])  # poll the borrower even if the driver's socket is gone
            return
        if link is not None and kind == "offer" and link.orders and link.home_cell != cell_id:
            # A stale registration of a driver busy elsewhere: refuse for it rather than double-book.
            self._spawn(self.cell(cell_id).driver_message.remote(self.id, driver_id, "decline",
                                                                   {"offer_id": message["offer_id"]}))
            return
        if link is not None and kind in ("offer", "assigned") and link.home_cell != cell_id:
            # Only the cell that holds a driver sends it work: it was borrowed by that cell.
            self._moved(link, cell_id, kind)
        if kind == "assigned":
            if link is not None:
                link.orders |= {o["order_id"] for o in message["orders"]}
        elif kind == "cancelled" and link is not None:
            link.orders.discard(message["order_id"])
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
        link.last_handover_try = time.time() + self.params.borrowed_hold_s - self.params.handover_retry_s

    # GPS in, positions out ---------------------------------------------------------

    def gps(self, link: DriverLink, lat: float, lng: float, heading, speed, now: float,
            fix_t: int | None = None) -> None:
        """Buffer one fix for its cell; publish it to the customers following this driver's orders."""
        here = cell_of_point(lat, lng, self.params.cell_res)
        if link.home_cell is None:
            link.home_cell = here
        elif here != link.home_cell and now - link.last_handover_try >= self.params.handover_retry_s:
            link.last_handover_try = now
            self._spawn(self._handover(link, here))
        self.fixes[link.home_cell][link.driver_id] = (link.driver_id, lat, lng, heading, speed, link.capacity, now)
        self.stats["gps_in"] += 1
        for order_id in link.orders:
            if now - link.position_sent_at.get(order_id, 0.0) < self.params.position_interval_s:
                continue
            link.position_sent_at[order_id] = now
            self.broker.publish(f"order:{order_id}", {
                "type": "driver_position", "order_id": order_id, "driver_id": link.driver_id,
                "lat": lat, "lng": lng, "heading": heading, "t": now, "fix_t": fix_t,
            })

    async def _handover(self, link: DriverLink, new_cell: str) -> None:
        old = link.home_cell
        try:
            moved = await self.cell(old).remove_driver.remote(link.driver_id)
        except Exception:
            log.warning("handover of %s from %s failed", link.driver_id, old, exc_info=True)
            return
        if moved and link.home_cell == old:
            log.info("driver %s handed over from %s to %s", link.driver_id, old, new_cell)
            link.home_cell = new_cell
            self.fixes[old].pop(link.driver_id, None)
            self.cell(new_cell)

    def _on_position(self, message: dict) -> None:
        """A driver position from the broker: to this process's customers following the order."""
        order_id = message["order_id"]
        for customer in self.customers.get(order_id, ()):
            customer.outbox.send_latest(("position", order_id), message)
            self.stats["positions_out"] += 1

    async def _flush_loop(self) -> None:
        """Every ``gps_flush_s``, one call per cell with its drivers' latest fixes.

        A cell gets its next batch only once it has taken the previous one (fixes
        keep coalescing meanwhile), so a slow or restarting cell delays nobody else.
        """
        while True:
            await asyncio.sleep(self.params.gps_flush_s)
            for cell, fixes in self.fixes.items():
                if fixes and cell not in self.gps_in_flight:
                    self.fixes[cell] = {}
                    self.gps_in_flight.add(cell)
                    self._spawn(self._push_gps(cell, list(fixes.values())))

    async def _push_gps(self, cell: str, fixes: list[tuple]) -> None:
        self.stats["gps_batches"] += 1
        try:
            await self.cell(cell).push_gps.remote(self.id, fixes)
        except Exception as exc:
            log.warning("GPS batch to cell %s failed: %s", cell, exc)
        else:
            # Seen from here, so still observable when this process is too busy to answer HTTP.
            self.stats["gps_to_cell_ms"] = round((time.time() - min(fix[6] for fix in fixes)) * 1000, 1)
        finally:
            self.gps_in_flight.discard(cell)

    # Drivers ----------------------------------------------------------------------------

    async def attach_driver(self, driver_id: str, outbox: Outbox) -> DriverLink:
        """A driver's socket opened here; its open jobs (if any) are found in Postgres."""
        link = DriverLink(driver_id, outbox)
        previous = self.drivers.get(driver_id)
        if previous is not None:
            previous.outbox.close()  # the newest connection wins
            link.home_cell, link.orders = previous.home_cell, previous.orders
        self.drivers[driver_id] = link
        self.broker.publish("sessions", {"driver_id": driver_id, "gateway": self.id, "at": link.attached_at})
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO drivers (id, vehicle, capacity) VALUES ($1, 'car', 1) ON CONFLICT DO NOTHING", driver_id
            )
            capacity = await conn.fetchval("SELECT capacity FROM drivers WHERE id = $1", driver_id)
            rows = await conn.fetch(
                """SELECT o.id, r.latitude, r.longitude FROM orders o JOIN restaurants r ON r.id = o.restaurant_id
                   WHERE o.driver_id = $1 AND NOT o.cancelled AND o.courier_status <> 'delivered'""",
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

    async def driver_says(self, link: DriverLink, kind: str, fields: dict) -> list[dict]:
        """Route a driver's reply to its cell; returns frames for the driver (errors, or an ack)."""
        if link.home_cell is None:
            return [{"type": "error", "code": "no_position", "message": "send a GPS fix first"}]
        # A fix still waiting for the next flush goes first, so the cell knows the driver.
        fix = self.fixes[link.home_cell].pop(link.driver_id, None)
        try:
            replies = await self.cell(link.home_cell).driver_message.remote(self.id, link.driver_id, kind, fields, fix)
        except Exception:  # a cell restarting or failing: the driver may retry, its socket stays open
            log.warning("driver %s %s: cell %s failed", link.driver_id, kind, link.home_cell, exc_info=True)
            return [UNAVAILABLE]
        for reply in replies:
            log.info("driver %s %s %s refused by cell %s: %s", link.driver_id, kind, fields, link.home_cell, reply)
        if not replies and kind == "delivered":
            link.orders.discard(fields["order_id"])
        return replies or [{"type": "ack", "of": kind, **fields}]

    # Orders from the HTTP API ---------------------------------------------------------

    def order_placed(self, order: LiveOrder) -> None:
        """A new order (committed): to its cell at once, without reading it back from Postgres."""
        self._spawn(self._add_order(order))

    async def _add_order(self, order: LiveOrder) -> None:
        try:
            handle = self.cell(cell_of_point(order.restaurant_lat, order.restaurant_lng, self.params.cell_res))
            await handle.add_order.remote({name: getattr(order, name) for name in NEW_ORDER_FIELDS})
        except Exception:
            # The cell's periodic sweep of Postgres will still pick the order up.
            log.warning("telling the cell about new order %s failed", order.id, exc_info=True)

    async def order_changed(self, order_id: int, change: str) -> None:
        """Tell the order's cell about a new ready estimate (``ready``) or a cancellation (``cancelled``)."""
        try:
            row = await self.pool.fetchrow(LIVE_ORDER_SQL, order_id)
            if row is None:
                return
            handle = self.cell(cell_of_point(row["restaurant_lat"], row["restaurant_lng"], self.params.cell_res))
            if change == "ready":
                await handle.revise_ready.remote(order_id, float(row["ready_at"]))
            elif change == "cancelled":
                await handle.cancel_order.remote(order_id, "cancelled")
        except Exception:
            # The cell's periodic sweep of Postgres will still pick the change up.
            log.warning("telling the cell about order %s (%s) failed", order_id, change, exc_info=True)

    def notify_order(self, order_id: int, change: str) -> None:
        self._spawn(self.order_changed(order_id, change))

    # Customers and status events ------------------------------------------------------

    async def subscribe(self, customer: CustomerLink, order_id: int, after_seq: int) -> None:
        """Follow an order: every status event after ``after_seq``, then live ones, then positions."""
        customer.last_seq[order_id] = after_seq
        if not self.customers.get(order_id):
            self.broker.subscribe(f"order:{order_id}", self._on_position)
        self.customers[order_id].add(customer)
        driver = await self.pool.fetchval("SELECT driver_id FROM orders WHERE id = $1", order_id)
        if driver is not None:
            link = self.drivers.get(driver)
            if link is not None:
                link.orders.add(order_id)
        await self._catch_up(customer, order_id)

    def unsubscribe(self, customer: CustomerLink, order_id: int | None = None) -> None:
        for oid in [order_id] if order_id is not None else list(customer.last_seq):
            followers = self.customers.get(oid)
            if followers is not None:
                followers.discard(customer)
                if not followers:
                    del self.customers[oid]
                    self.broker.unsubscribe(f"order:{oid}")
            customer.last_seq.pop(oid, None)

    async def _catch_up(self, customer: CustomerLink, order_id: int) -> None:
        await self._fill({order_id: customer.last_seq.get(order_id, 0)})

    async def _fill(self, after: dict[int, int]) -> None:
        """Send every follower of each order in ``after`` the events it lacks, from ``order_events``.

        ``after`` maps an order to a sequence number no follower is behind;
        events a follower already has are skipped, so fills may overlap.
        """
        if not after:
            return
        rows = await self.pool.fetch(
            """SELECT e.order_id, e.seq, e.type, e.status, e.payload, e.actor, e.at
               FROM order_events e JOIN unnest($1::bigint[], $2::bigint[]) AS f(order_id, after_seq)
                 ON e.order_id = f.order_id AND e.seq > f.after_seq
               ORDER BY e.order_id, e.seq""",
            list(after), list(after.values()),
        )
        for row in rows:
            event = dict(row)
            for customer in list(self.customers.get(event["order_id"], ())):
                self._status_to(customer, event)

    async def _resync(self, _conn) -> None:
        """Listening again: every followed order from its furthest-behind follower's last event."""
        await self._fill({order_id: min(c.last_seq.get(order_id, 0) for c in followers)
                          for order_id, followers in self.customers.items() if followers})

    async def _fill_gap(self, customer: CustomerLink, order_id: int) -> None:
        """:meth:`_catch_up`, retried with back-off while Postgres cannot answer and the customer still follows."""
        retrying = AsyncRetrying(retry=retry_if_exception_type(Exception), stop=stop_after_delay(GAP_FILL_DEADLINE_S),
                                 wait=wait_exponential_jitter(initial=0.2, max=5.0, jitter=0.2))
        try:
            async for attempt in retrying:
                with attempt:
                    if order_id in customer.last_seq:
                        await self._catch_up(customer, order_id)
        except Exception:  # the listener's resynchronisation on reconnect still fills it
            log.warning("status events of order %s: gap not filled", order_id, exc_info=True)

    def _status_to(self, customer: CustomerLink, event: dict) -> bool:
        """Send ``event`` if it is the next one for this customer; False if there is a gap."""
        order_id, seq = event["order_id"], event["seq"]
        last = customer.last_seq.get(order_id)
        if last is None or seq <= last:
            return True
        if seq != last + 1:
            return False
        customer.last_seq[order_id] = seq
        at = event["at"]
        customer.outbox.send({
            "type": "status", "order_id": order_id, "seq": seq, "event": event["type"], "status": event["status"],
            "payload": event.get("payload") or {}, "at": at if isinstance(at, str) else at.isoformat(),
        })
        self.stats["status_out"] += 1
        return True

    def _on_notify(self, connection, pid, channel, payload: str) -> None:
        import orjson

        event = orjson.loads(payload)
        order_id = event["order_id"]
        driver = (event.get("payload") or {}).get("driver_id")
        link = self.drivers.get(driver) if driver else None
        if link is not None:
            if event["type"] == "assign":
                link.orders.add(order_id)
            elif event["type"] in ("deliver", "unassign"):
                link.orders.discard(order_id)
                link.position_sent_at.pop(order_id, None)
        for customer in list(self.customers.get(order_id, ())):
            if not self._status_to(customer, event):
                self._spawn(self._fill_gap(customer, order_id))
