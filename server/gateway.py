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
  any front door is closed: a driver has one live session in the whole fleet;
* opens cells only where the deployment serves and within its cap: a fix that
  jumps further than any vehicle goes, or lands outside the service area, or
  would open a cell past ``max_cells``, is refused and changes nothing; an order
  is admitted (or refused) before it is placed. Idle cells retire themselves
  (``actors.cell.CellRetired``); the directory forgets them, and the next fix
  or order opens them anew.

Sockets are represented by :class:`Outbox` objects; a slow consumer loses
positions, never status events, and never slows anyone else. An outbox is
bounded by bytes and by the age of its oldest unsent frame: past either, the
socket is closed with 1013 and the client resumes (``after_seq``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
import weakref
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

import h3.api.basic_int as h3

from actors.cell import (
    DEFAULT_CELL_RES, LIVE_ORDER_SQL, NAMESPACE, NEW_ORDER_FIELDS, UNAVAILABLE, CellRetired, Rehome, actor_name,
    cell_actor_class, cell_names, cell_of_point,
)
from dispatch.cell import CellParams, LiveOrder
from dispatch.cells import owner_cell
from dispatch.movement import Fix, MovementParams, implausible_jump
from dispatch.routing import Routing, handover_due, hold_after_borrow, route_cell_message
from dispatch.service_area import Region, ServiceArea, cell_refusal
from server.broker import LocalBroker, RedisBroker
from server.errors import ApiError
import wire
from wire import error_frame
from server.listener import ResilientListener
from store.orders import ACTIVE_ORDER

log = logging.getLogger("hexdispatch.gateway")

#: How long a starting front door waits for its status-event listener before serving anyway (seconds).
LISTEN_START_WAIT_S = 10.0
#: How many answered command ids are remembered per driver (a repeat of one gets the same answer).
ANSWERS_KEPT = 64
#: How many drivers a front door remembers answers and departed cells for.
DRIVERS_REMEMBERED = 100_000
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
    outbox_max_bytes: int = 256 * 1024
    """Bytes of frames queued for one socket, not yet handed to it, before it is closed with 1013 (try again
    later: the client reconnects and resumes with ``after_seq``)."""
    outbox_max_age_s: float = 30.0
    """Age of a socket's oldest frame not yet handed to it before it is closed with 1013, whether or not
    more frames come (a reader that stopped reading blocks its writer in flow control)."""
    outbox_check_s: float = 1.0
    """How often the outboxes are checked for frames older than ``outbox_max_age_s``."""
    close_grace_s: float = 2.0
    """How long a server-side close may wait for its close frame to go out before the connection is aborted."""
    cell_tick_s: float = 0.25
    """Matching tick of each cell actor."""
    cell: CellParams = field(default_factory=CellParams)
    cell_resource: str = "cell_host"
    """Custom Ray resource of the nodes that may host cells (``ray_cluster.yaml``); used when the cluster has it."""
    max_cells: int = 80
    """Most cell actors the deployment runs. Each is a process of about 180 MB: 80 take about 14 GiB, which
    leaves a 24 GiB machine room for the front doors, Postgres and Ray. Past it, new cells are refused
    (``cell_capacity``)."""
    service_area: Region | None = None
    """The cells the deployment serves; None: derived from the restaurants (``dispatch.service_area``)."""
    service_margin_m: float = 3000.0
    """How far beyond a restaurant's delivery radius the derived service area reaches (drivers approach)."""
    movement: MovementParams = field(default_factory=MovementParams)
    """The fastest plausible move between two fixes of a driver (``dispatch.movement``)."""
    census_s: float = 5.0
    """How often the deployment's cell actors are counted (Ray's named actors) for ``max_cells``."""
    reopen_timeout_s: float = 30.0
    """How long a call keeps re-opening a cell that retired under it before giving up."""


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


def cell_gone_errors() -> tuple[type[BaseException], ...]:
    """What a call to a cell raises when its actor is gone for good: retired, or killed without restart."""
    from ray.exceptions import ActorDiedError

    return CellRetired, ActorDiedError


def remember(memory: OrderedDict, key: str, value):
    """Store ``value`` under ``key`` as the most recent of at most ``DRIVERS_REMEMBERED`` entries; returns it."""
    memory.pop(key, None)
    memory[key] = value
    if len(memory) > DRIVERS_REMEMBERED:
        memory.popitem(last=False)
    return value


def unix_seconds(at: datetime | str) -> float:
    """A time from Postgres (a ``timestamptz``, or its ISO text in a notification) as unix seconds."""
    return (at if isinstance(at, datetime) else datetime.fromisoformat(at)).timestamp()


class Gateway:
    def __init__(self, dsn: str, pool, params: GatewayParams | None = None,
                 broker: LocalBroker | RedisBroker | None = None, replica=None):
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
        #: Per driver, the replies to its last ``ANSWERS_KEPT`` commands by id (kept across its reconnects here),
        #: for the ``DRIVERS_REMEMBERED`` drivers seen last.
        self.answered: OrderedDict[str, OrderedDict[str, list]] = OrderedDict()
        #: The cell of each driver whose socket closed here (the last ``DRIVERS_REMEMBERED``): where its state is
        #: asked for when it reconnects (its ``welcome``), even if it held no order.
        self.departed_cells: OrderedDict[str, str] = OrderedDict()
        self.customers: dict[int, set[CustomerLink]] = defaultdict(set)
        self.tasks: set[asyncio.Task] = set()
        # Every front door hears every status event; after a lost connection, followers are filled from the table.
        self.listener = ResilientListener(dsn, {"order_events": self._on_notify}, on_connect=self._resync,
                                          name="status events")
        self.outboxes: weakref.WeakSet[Outbox] = weakref.WeakSet()  # every open socket's, for the age check
        self.stats = {"gps_in": 0, "gps_fast": 0, "gps_batches": 0, "status_out": 0, "positions_out": 0,
                      "gps_to_cell_ms": 0.0,  # the oldest fix of the last batch, received until the cell took it
                      "refused_implausible_jump": 0, "refused_outside_service_area": 0, "refused_cell_capacity": 0,
                      "cells_opened": 0, "cells_retired": 0,
                      "closed_behind": 0,  # sockets closed with 1013 for falling behind
                      "outbox_dropped_frames": 0, "positions_superseded": 0,
                      "frames_in_driver": 0, "frames_in_customer": 0, "frames_out_driver": 0,
                      "frames_out_customer": 0, "frames_in_admin": 0, "frames_out_admin": 0}
        #: The catalog replica (``server.catalog_replica``) the service area follows; None: no restaurants known.
        self.replica = replica
        self.area = ServiceArea(self.params.cell_res, self.params.service_margin_m, self.params.service_area)
        #: Cells with an actor anywhere in the deployment, as last counted (see ``_census_loop``).
        self.census: set[str] = set()
        self._flusher: asyncio.Task | None = None
        self._census: asyncio.Task | None = None
        self._outbox_checker: asyncio.Task | None = None
        self._actor_class = cell_actor_class()
        self._placement: tuple[float, dict] = (-1e9, {})

    # Lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.listener.start()
        if not await self.listener.wait_connected(LISTEN_START_WAIT_S):
            log.warning("status events: not listening yet; followers catch up from order_events once it is")
        self.broker.subscribe("sessions", self._on_session)
        await self.broker.start()
        if self.replica is not None and self.params.service_area is None:
            self.replica.listeners.append(self._restaurants_changed)
            if self.replica.loaded_at is not None:
                self.area.replace(self.replica.positions())
        await self._count_cells()
        loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush_loop())
        self._census = loop.create_task(self._census_loop())
        self._outbox_checker = loop.create_task(self._check_outboxes())

    async def stop(self) -> None:
        for task in [self._flusher, self._census, self._outbox_checker, *self.pollers.values(), *self.tasks]:
            if task is not None:
                task.cancel()
        await self.broker.stop()
        await self.listener.stop()

    def snapshot(self) -> dict:
        """This front door's counters (the admin API's view of the process)."""
        return {"gateway": self.id, "pid": os.getpid(), **self.stats, "drivers_connected": len(self.drivers),
                "customers_connected": len({c for followers in self.customers.values() for c in followers}),
                "cells_polled": len(self.pollers), "cells_open": len(self.cells),
                "cells_in_deployment": len(self.census | self.cells.keys()), "max_cells": self.params.max_cells,
                "service_area": "configured" if self.params.service_area is not None else
                f"{len(self.area)} cells around the restaurants",
                "broker": type(self.broker).__name__,
                **({"broker_stats": self.broker.stats} if hasattr(self.broker, "stats") else {})}

    # Sockets' outboxes -------------------------------------------------------------------

    def outbox(self, encode: Callable[[dict], bytes | str], on_overflow: Callable[[], None]) -> Outbox:
        """A new socket's outbox, bounded by this gateway's limits; ``on_overflow`` closes the socket."""
        outbox = Outbox(encode, self.params.outbox_max_bytes, self.params.outbox_max_age_s, counts=self.stats)

        def overflowed() -> None:
            self.stats["closed_behind"] += 1
            on_overflow()

        outbox.on_overflow = overflowed
        self.outboxes.add(outbox)
        return outbox

    async def _check_outboxes(self) -> None:
        """Overflow every outbox whose oldest waiting frame is too old, even if nothing more comes to it."""
        while True:
            await asyncio.sleep(self.params.outbox_check_s)
            now = time.monotonic()
            for outbox in list(self.outboxes):
                outbox.check_age(now)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # Cells ---------------------------------------------------------------------------

    def cell(self, cell_id: str):
        """The actor of ``cell_id``, created on first use (shared by every front door).

        Admission (service area, cap) is decided where fixes and orders come in
        (:meth:`admit_cell`); this opens the cells they were admitted to, or
        that hold what was already admitted.
        """
        handle = self.cells.get(cell_id)
        if handle is None:
            handle = self._actor_class.options(
                name=actor_name(cell_id), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                **self._cell_placement(),
            ).remote(cell_id, self.dsn, self.params.cell, self.params.cell_tick_s)
            self.cells[cell_id] = handle
            self.stats["cells_opened"] += 1
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

    def admit_cell(self, cell_id: str, cell: int, order: bool = False) -> dict | None:
        """Open ``cell_id`` (``cell`` as an integer) for a driver's fix, or for an order (``order``), unless it is
        outside the service area or would be a new cell past ``max_cells``: then the error frame saying why."""
        exists = cell_id in self.cells or cell_id in self.census
        inside = self.area.takes_orders_in(cell) if order else self.area.contains(cell)
        # Counting the cells costs a set union: only for a cell that would be new.
        cells = 0 if exists else len(self.census | self.cells.keys())
        code = cell_refusal(inside, exists, cells, self.params.max_cells)
        if code == "outside_service_area":
            return error_frame(code, f"cell {cell_id} is outside the area this deployment serves")
        if code == "cell_capacity":
            log.warning("cell %s refused: the deployment runs its maximum of %d cells", cell_id, self.params.max_cells)
            return error_frame(code, f"the deployment runs its maximum of {self.params.max_cells} cells;"
                                     f" cell {cell_id} cannot be opened now, retry later")
        self.cell(cell_id)
        return None

    def count_refusal(self, code: str) -> None:
        """A fix or order was refused with ``code`` (admin stats: ``refused_<code>``)."""
        key = f"refused_{code}"
        self.stats[key] = self.stats.get(key, 0) + 1

    def _restaurants_changed(self, restaurant_ids, records) -> None:
        """The catalog replica changed: the service area follows (``None``: it was reloaded whole)."""
        rows = [(r["id"], r["latitude"], r["longitude"], r["delivery_radius_m"]) for r in records]
        if restaurant_ids is None:
            self.area.replace(rows)
            return
        for row in rows:
            self.area.put(*row)
        present = {row[0] for row in rows}
        for restaurant_id in restaurant_ids:
            if restaurant_id not in present:
                self.area.remove(restaurant_id)

    async def _census_loop(self) -> None:
        """Count the deployment's cells (every front door's) for the cap, every ``census_s``."""
        while True:
            await asyncio.sleep(self.params.census_s)
            await self._count_cells()

    async def _count_cells(self) -> None:
        try:
            self.census = set(await asyncio.to_thread(cell_names))
        except Exception:
            log.warning("counting the cells failed; the cap counts what this front door knows", exc_info=True)

    async def call_cell(self, cell_id: str, method: str, *args):
        """``method(*args)`` on the cell's actor. If the actor retired (or died for good) under the call, the cell
        is opened anew (a new actor, rebuilt from Postgres) and called again, for up to ``reopen_timeout_s``."""
        deadline = time.monotonic() + self.params.reopen_timeout_s
        while True:
            handle = self.cell(cell_id)
            try:
                return await getattr(handle, method).remote(*args)
            except cell_gone_errors():
                self._forget(cell_id, handle)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # a retiring actor keeps its name until it has exited

    def _forget(self, cell_id: str, handle) -> None:
        """The cell's actor retired or died for good: out of the directory; its next use opens it anew."""
        if self.cells.get(cell_id) is not handle:
            return
        log.info("cell %s is gone (retired); it opens anew when next needed", cell_id)
        del self.cells[cell_id]
        self.census.discard(cell_id)
        self.stats["cells_retired"] += 1
        poller = self.pollers.pop(cell_id, None)
        if poller is not None and poller is not asyncio.current_task():
            poller.cancel()
        for link in self.drivers.values():
            if link.home_cell == cell_id:
                link.home_cell = None  # held no online driver: its next fix homes it where it is
        if not self.fixes.get(cell_id, True):
            del self.fixes[cell_id]

    async def _ready(self, cell_id: str, handle) -> None:
        try:
            await handle.ready.remote()
        except Exception:
            log.exception("cell %s failed to start", cell_id)

    async def _poll_loop(self, cell_id: str) -> None:
        while True:
            handle = self.cells.get(cell_id)
            if handle is None:
                if self.pollers.get(cell_id) is asyncio.current_task():
                    del self.pollers[cell_id]
                return
            try:
                messages = await handle.poll.remote(self.id, self.params.poll_timeout_s)
            except asyncio.CancelledError:
                raise
            except cell_gone_errors():
                # Retired, or killed for good (cells restart on failure): the next use opens it anew.
                self._forget(cell_id, handle)
                continue
            except Exception:
                log.warning("poll of cell %s failed; retrying", cell_id, exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for driver_id, message in messages:
                self._to_driver(driver_id, message, cell_id)

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

    # GPS in, positions out ---------------------------------------------------------

    def gps(self, link: DriverLink, lat: float, lng: float, heading, speed, now: float,
            fix_t: int | None = None) -> dict | None:
        """Buffer one fix for its cell; publish it to the customers following this driver's orders.

        Returns the error frame of a refused fix, which changes nothing: a jump
        further than any vehicle goes (``dispatch.movement``), a cell outside the
        service area, or a new cell past ``max_cells``. The caller answers it.
        """
        fix = Fix(lat, lng, now)
        jump = implausible_jump(link.last_fix, fix, self.params.movement)
        if jump is not None:
            return error_frame("implausible_jump", f"this fix is {jump.distance_m:,.0f} m from the last one, taken"
                               f" {jump.elapsed_s:.1f} s earlier (at most {jump.allowed_m:,.0f} m is plausible)")
        cell = owner_cell(lat, lng, self.params.cell_res)
        here = h3.int_to_str(cell)
        refusal = self.admit_cell(here, cell)
        if refusal is not None:
            return refusal
        link.last_fix = fix
        if link.home_cell is None:
            link.home_cell = here
        elif handover_due(link.home_cell, here, now, link.last_handover_try, self.params.handover_retry_s):
            link.last_handover_try = now
            self._spawn(self._handover(link, here))
        self.fixes[link.home_cell][link.driver_id] = (link.driver_id, lat, lng, heading, speed, link.capacity, now)
        self.stats["gps_in"] += 1
        for order_id in link.orders:
            if now - link.position_sent_at.get(order_id, 0.0) < self.params.position_interval_s:
                continue
            link.position_sent_at[order_id] = now
            self.broker.publish(f"order:{order_id}",
                                wire.DriverPosition(order_id, link.driver_id, lat, lng, heading, now, fix_t).to_dict())
        return None

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
            for cell in [c for c, fixes in self.fixes.items() if not fixes and c not in self.cells]:
                del self.fixes[cell]  # a cell that retired
            for cell, fixes in self.fixes.items():
                if fixes and cell not in self.gps_in_flight:
                    self.fixes[cell] = {}
                    self.gps_in_flight.add(cell)
                    self._spawn(self._push_gps(cell, list(fixes.values())))

    async def _push_gps(self, cell: str, fixes: list[tuple]) -> None:
        self.stats["gps_batches"] += 1
        try:
            await self.call_cell(cell, "push_gps", self.id, fixes)
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

    # Orders from the HTTP API ---------------------------------------------------------

    async def admit_order(self, restaurant_id: int) -> None:
        """Open the cell of an order about to be placed, or refuse the order (``ApiError``): its restaurant's cell
        is outside the service area (422), or would be a new cell past ``max_cells`` (503). Placed orders then
        always have a live cell. An unknown restaurant passes (placing the order answers 404)."""
        position = self.replica.position(restaurant_id) if self.replica is not None else None
        if position is None:
            row = await self.pool.fetchrow("SELECT latitude, longitude FROM restaurants WHERE id = $1", restaurant_id)
            if row is None:
                return
            position = (row["latitude"], row["longitude"])
        cell = owner_cell(*position, self.params.cell_res)
        refusal = self.admit_cell(h3.int_to_str(cell), cell, order=True)
        if refusal is not None:
            self.count_refusal(refusal.code)
            raise ApiError(422 if refusal.code == "outside_service_area" else 503, refusal.code, refusal.message)

    def order_placed(self, order: LiveOrder) -> None:
        """A new order (committed): to its cell at once, without reading it back from Postgres."""
        self._spawn(self._add_order(order))

    async def _add_order(self, order: LiveOrder) -> None:
        try:
            await self.call_cell(cell_of_point(order.restaurant_lat, order.restaurant_lng, self.params.cell_res),
                                 "add_order", {name: getattr(order, name) for name in NEW_ORDER_FIELDS})
        except Exception:
            # The cell's periodic sweep of Postgres will still pick the order up.
            log.warning("telling the cell about new order %s failed", order.id, exc_info=True)

    async def order_changed(self, order_id: int, change: str) -> None:
        """Tell the order's cell about a new ready estimate (``ready``) or a cancellation (``cancelled``)."""
        try:
            row = await self.pool.fetchrow(LIVE_ORDER_SQL, order_id)
            if row is None:
                return
            cell_id = cell_of_point(row["restaurant_lat"], row["restaurant_lng"], self.params.cell_res)
            if change == "ready":
                await self.call_cell(cell_id, "revise_ready", order_id, float(row["ready_at"]))
            elif change == "cancelled":
                await self.call_cell(cell_id, "cancel_order", order_id, "cancelled")
        except Exception:
            # The cell's periodic sweep of Postgres will still pick the change up.
            log.warning("telling the cell about order %s (%s) failed", order_id, change, exc_info=True)

    def notify_order(self, order_id: int, change: str) -> None:
        self._spawn(self.order_changed(order_id, change))

    # Customers and status events ------------------------------------------------------

    async def subscribe(self, customer: CustomerLink, order_id: int, after_seq: int) -> None:
        """Follow an order: every status event after ``after_seq``, then live ones, then positions. Following
        an order again sends only what this customer has not been sent yet (no duplicates)."""
        customer.last_seq[order_id] = max(after_seq, customer.last_seq.get(order_id, after_seq))
        if not self.customers.get(order_id):
            self.broker.subscribe(f"order:{order_id}", self._on_position)
        self.customers[order_id].add(customer)
        try:
            driver = await self.pool.fetchval("SELECT driver_id FROM orders WHERE id = $1", order_id)
            if driver is not None:
                link = self.drivers.get(driver)
                if link is not None:
                    link.orders.add(order_id)
            await self._catch_up(customer, order_id)
        except Exception:  # Postgres unreachable: the customer follows anyway, its events come once it is back
            log.warning("subscribing to order %s: catching up failed; retrying", order_id, exc_info=True)
            self._spawn(self._fill_gap(customer, order_id))

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
            """SELECT e.order_id, e.seq, e.type, e.status, e.kitchen_status, e.courier_status, e.payload, e.actor, e.at
               FROM order_events e JOIN unnest($1::bigint[], $2::bigint[]) AS f(order_id, after_seq)
                 ON e.order_id = f.order_id AND e.seq > f.after_seq
               ORDER BY e.order_id, e.seq""",
            list(after), list(after.values()),
        )
        for row in rows:
            event = dict(row)
            for customer in list(self.customers.get(event["order_id"], ())):
                await customer.outbox.room()  # a long catch-up goes at the pace the socket reads
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
        customer.outbox.send(wire.Status(
            order_id, seq, event["type"], event["status"], event.get("kitchen_status"), event.get("courier_status"),
            event.get("payload") or {}, unix_seconds(event["at"])))
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
