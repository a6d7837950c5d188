"""The cell actor: the I/O shell around ``dispatch.cell.CellCore`` for one H3 cell.

One actor per H3 cell at a configurable resolution, ``DEFAULT_CELL_RES`` unless
``HEXDISPATCH_CELL_RES`` says otherwise (named ``cell-<h3 index>`` so the Ray
dashboard shows which cell is which). It owns the live state of its cell,
runs the matcher every tick, persists every decision in Postgres, and hands
messages for drivers to the front-door process (gateway) holding each
driver's socket, which collects them by long-polling :meth:`CellActor.poll`.

On (re)start it rebuilds its pending and active orders from Postgres; drivers
re-appear with their next GPS fix. A periodic sweep re-reads the cell's
unassigned orders, so an order whose notification was lost is still dispatched.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict

import h3.api.basic_int as h3

from actors.metrics import CellMetrics
from dispatch.cell import (
    CellCore,
    CellError,
    CellParams,
    Command,
    LiveOrder,
    PersistAssignment,
    PersistOrderEvent,
    SendToDriver,
)
from dispatch.cells import descendant_range, owner_cell
from dispatch.geo import haversine_m
from dispatch.lifecycle import Actor, DriverEvent, Event
from dispatch.retirement import IdleWatch
from server.gc_watch import freeze_survivors

log = logging.getLogger("hexdispatch.cell")

#: H3 resolution of a cell actor. Resolution 6 cells are about 36 km^2 (3.7 km
#: edges): a few minutes' drive across, so most pickups are matched inside one
#: cell, while a metro area needs tens of actors rather than thousands.
DEFAULT_CELL_RES = 6
NAMESPACE = "hexdispatch"
#: After a driver leaves (lent to a neighbour, or handed over), fixes still
#: routed here (sent before the front door learnt of the move) are ignored for
#: this long, so the driver is never registered in two cells.
DEPARTED_FIX_GRACE_S = 5.0
#: How often a cell sets its Ray gauges (see ``actors.metrics``).
METRICS_EXPORT_S = 2.0
#: A front door that has not polled for this long is gone: its undelivered messages are dropped.
GATEWAY_SILENT_S = 60.0
#: A retiring cell answers for this long (every call refused with CellRetired) before its process exits.
RETIRE_GRACE_S = 0.5

_ORDER_EVENTS = {"arrive": Event.ARRIVE, "pick_up": Event.PICK_UP, "deliver": Event.DELIVER, "unassign": Event.UNASSIGN}

LIVE_ORDER_SELECT = """
    SELECT o.id, o.restaurant_id, r.latitude AS restaurant_lat, r.longitude AS restaurant_lng,
           o.dropoff_lat, o.dropoff_lng, extract(epoch FROM o.placed_at) AS placed_at,
           extract(epoch FROM coalesce(least(o.ready_at, o.ready_estimate_at), o.ready_estimate_at)) AS ready_at,
           o.courier_status, o.driver_id, o.job_id
    FROM orders o JOIN restaurants r ON r.id = o.restaurant_id
"""
#: Every order of a cell still to be delivered ($1, $2: the cell's range of restaurant cells).
LIVE_ORDERS_SQL = LIVE_ORDER_SELECT + """
    WHERE NOT o.cancelled AND o.courier_status <> 'delivered' AND r.h3_cell BETWEEN $1 AND $2
"""
#: One order, as a cell sees it.
LIVE_ORDER_SQL = LIVE_ORDER_SELECT + " WHERE o.id = $1"


def cell_of_point(lat: float, lng: float, res: int = DEFAULT_CELL_RES) -> str:
    """The cell (hex string) whose actor owns a point (see ``dispatch.cells.owner_cell``)."""
    return h3.int_to_str(owner_cell(lat, lng, res))


def actor_name(cell_id: str) -> str:
    return f"cell-{cell_id}"


def cell_names(namespace: str = NAMESPACE) -> list[str]:
    """The cell ids of every live cell actor (blocking: asks Ray's control store)."""
    import ray

    return [actor["name"][len("cell-"):] for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == namespace and actor["name"].startswith("cell-")]


def cell_handles(namespace: str = NAMESPACE) -> dict[str, object]:
    """Handles of every cell actor, by cell id (blocking: asks Ray's control store)."""
    import ray

    handles = {}
    for cell_id in cell_names(namespace):
        try:
            handles[cell_id] = ray.get_actor(actor_name(cell_id), namespace=namespace)
        except ValueError:
            continue  # died since it was listed
    return handles


def live_order(row) -> LiveOrder:
    """The live order of a :data:`LIVE_ORDER_SELECT` row."""
    return _live_order(row, float(row["placed_at"]), float(row["ready_at"]))


def placed_order(row) -> LiveOrder:
    """The live order of an order row just placed (``server.store.orders.place_order``): not ready yet,
    so its ready time is the kitchen's estimate, as :data:`LIVE_ORDER_SELECT` would read it."""
    return _live_order(row, row["placed_at"].timestamp(), row["ready_estimate_at"].timestamp())


def _live_order(row, placed_at: float, ready_at: float) -> LiveOrder:
    return LiveOrder(id=row["id"], restaurant_id=row["restaurant_id"], restaurant_lat=row["restaurant_lat"],
                     restaurant_lng=row["restaurant_lng"], dropoff_lat=row["dropoff_lat"],
                     dropoff_lng=row["dropoff_lng"], placed_at=placed_at, ready_at=ready_at)


#: What a front door sends a cell of a new order (:meth:`CellActor.add_order`).
NEW_ORDER_FIELDS = ("id", "restaurant_id", "restaurant_lat", "restaurant_lng", "dropoff_lat", "dropoff_lng",
                    "placed_at", "ready_at")


class CellRetired(Exception):
    """Raised by every call to a cell that has retired (``dispatch.retirement``): it holds nothing any more and
    exits. The caller opens the cell anew (a new actor, rebuilt from Postgres) and calls again."""


class CellActor:
    """A Ray actor (see :func:`cell_actor_class`) holding one cell's live state.

    An empty cell retires after ``CellParams.idle_retire_s`` of quiet: from the
    tick that decides it, every call raises :class:`CellRetired`, and the actor
    exits. The decision and the refusals run on the actor's one event loop, so
    a call is either taken before it (and the cell is not empty: no retirement)
    or refused after it (and its caller re-creates the cell): nothing is lost.
    """

    def __init__(self, cell_id: str, dsn: str, params: CellParams | None = None, tick_s: float = 0.25,
                 sweep_s: float = 15.0):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.cell_id = cell_id
        self.dsn = dsn
        self.core = CellCore(cell_id, params)
        self.tick_s = tick_s
        self.sweep_s = sweep_s
        self.pool = None
        self.outbox: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        self.wakeups: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.driver_gateway: dict[str, str] = {}
        self.started: asyncio.Task | None = None
        self.freezer: asyncio.Task | None = None
        self.metrics = CellMetrics(cell_id)
        self.stats = {"borrowed": 0, "lent": 0}
        self.last_poll: dict[str, float] = {}
        self._lock = None
        # Drivers that left this cell: fixes still routed here are ignored until the front door follows.
        self.departed_until: dict[str, float] = {}
        self.borrow_tried: dict[int, float] = {}
        self.neighbours: dict[str, object] = {}
        self.idle = IdleWatch(self.core.params.idle_retire_s, time.time())
        self.retired = False

    # Lifecycle ---------------------------------------------------------------

    async def ready(self) -> dict:
        """Open the database, rebuild from Postgres, start ticking (idempotent)."""
        await self._ensure_started()
        return {"cell": self.cell_id, **self.core.load()}

    async def _open(self, arrival: bool = True) -> None:
        """Start if need be; refuse the call (:class:`CellRetired`) once retired. ``arrival``: the call brings
        something (a fix, an order, a driver's message), which restarts the idle period."""
        await self._ensure_started()
        if self.retired:
            raise CellRetired(f"cell {self.cell_id} has retired; open it anew")
        if arrival:
            self.idle.arrived(time.time())

    async def _ensure_started(self) -> None:
        if self.started is not None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.started is None:
                from server.db import create_pool

                # A metro runs tens of cells against one Postgres: a quiet cell gives its connections back.
                self.pool = await create_pool(self.dsn, min_size=0, max_size=3, idle_close_s=10.0)
                await self._rebuild(time.time())
                loop = asyncio.get_running_loop()
                self.started = loop.create_task(self._run())
                # As in the front door: the collector would otherwise pause ticks and GPS batches
                # for a walk over every driver and order of the cell.
                self.freezer = loop.create_task(freeze_survivors())

    async def _rebuild(self, now: float) -> None:
        lo, hi = descendant_range(h3.str_to_int(self.cell_id))
        rows = await self.pool.fetch(LIVE_ORDERS_SQL, lo, hi)
        jobs: dict[str, list] = defaultdict(list)
        for row in rows:
            if row["job_id"] is None:
                self.core.add_order(live_order(row))
            else:
                jobs[row["job_id"]].append(row)
        for job_id, job_rows in jobs.items():
            statuses = {r["courier_status"] for r in job_rows}
            self.core.restore_job(
                job_id, job_rows[0]["driver_id"], [live_order(r) for r in job_rows],
                picked_up="picked_up" in statuses, at_restaurant="at_restaurant" in statuses, now=now,
            )
        log.info("cell %s rebuilt: %d pending, %d jobs", self.cell_id, len(rows), len(jobs))

    async def _run(self) -> None:
        last_sweep = last_export = time.time()
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._tick()
                if self.idle.may_retire(self.core.is_empty() and not any(self.outbox.values()), time.time()):
                    await self._retire()
                    return
                if time.time() - last_export >= METRICS_EXPORT_S:
                    last_export = time.time()
                    self.metrics.export(last_export, self.core.load())
                if time.time() - last_sweep >= self.sweep_s:
                    last_sweep = time.time()
                    await self._sweep()
            except Exception:  # a failed tick must not kill the cell: log it and tick again
                log.exception("cell %s tick failed", self.cell_id)

    async def _retire(self) -> None:
        """Refuse every call from now on, answer the waiting polls, and exit for good."""
        import ray

        self.retired = True
        log.info("cell %s retires after %.0f s empty", self.cell_id, self.core.params.idle_retire_s)
        for wakeup in self.wakeups.values():
            wakeup.set()
        if self.freezer is not None:
            self.freezer.cancel()
        await self.pool.close()
        await asyncio.sleep(RETIRE_GRACE_S)  # the woken polls answer CellRetired on their way out
        # Not ``exit_actor``: an actor with max_restarts would be restarted after it.
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def _tick(self) -> None:
        started = time.perf_counter()
        now = time.time()
        commands = self.core.tick(now)
        self.metrics.tick(time.perf_counter() - started)
        await self._execute(commands)
        if await self._borrow(now):
            await self._execute(self.core.tick(now))

    async def _borrow(self, now: float) -> bool:
        """Borrow idle drivers of neighbouring cells for orders no local driver took; True if any came."""
        params = self.core.params
        borrowed = False
        for order in self.core.unoffered_orders(now, params.borrow_after_s)[:5]:
            if now - self.borrow_tried.get(order.id, 0.0) < params.borrow_after_s:
                continue
            self.borrow_tried[order.id] = now
            for cell_id, neighbour in self._neighbours_nearest_first(order.restaurant_lat, order.restaurant_lng):
                try:
                    lent = await neighbour.lend_driver.remote(order.restaurant_lat, order.restaurant_lng,
                                                              params.borrow_radius_m, self.cell_id)
                except Exception:
                    self.neighbours.pop(cell_id, None)  # retired or gone: look it up afresh next time
                    continue
                if lent is not None:
                    self.core.driver_seen(lent["id"], lent["lat"], lent["lng"], now, capacity=lent["capacity"])
                    if lent["gateway"]:
                        # The lender told the driver's front door to route it here (and poll us).
                        self.driver_gateway[lent["id"]] = lent["gateway"]
                    self.stats["borrowed"] += 1
                    borrowed = True
                    break
        for order_id in [i for i in self.borrow_tried if i not in self.core.orders]:
            del self.borrow_tried[order_id]
        return borrowed

    def _neighbours_nearest_first(self, lat: float, lng: float) -> list[tuple[str, object]]:
        """(cell id, handle) of the live neighbouring cell actors, nearest (to the point) first."""
        import ray

        ring = sorted(h3.grid_ring(h3.str_to_int(self.cell_id), 1),
                      key=lambda c: haversine_m(lat, lng, *h3.cell_to_latlng(c)))
        handles = []
        for cell in ring:
            cell_id = h3.int_to_str(cell)
            handle = self.neighbours.get(cell_id)
            if handle is None:
                try:
                    handle = ray.get_actor(actor_name(cell_id), namespace=NAMESPACE)
                except ValueError:
                    continue  # no actor there: no drivers there
                self.neighbours[cell_id] = handle
            handles.append((cell_id, handle))
        return handles

    async def _sweep(self) -> None:
        """Pick up orders whose notification never arrived; drop ones cancelled behind our back."""
        lo, hi = descendant_range(h3.str_to_int(self.cell_id))
        rows = await self.pool.fetch(LIVE_ORDERS_SQL, lo, hi)
        live = {row["id"] for row in rows}
        for row in rows:
            if row["job_id"] is None:
                self.core.add_order(live_order(row))
        missing = [i for i in self.core.orders if i not in live]
        if missing:
            cancelled = await self.pool.fetch(
                "SELECT id FROM orders WHERE id = ANY($1::bigint[]) AND cancelled", missing)
            for row in cancelled:
                await self._execute(self.core.withdraw_order(row["id"], "cancelled"))
        now = time.time()
        for driver_id in [d for d, until in self.departed_until.items() if until < now]:
            del self.departed_until[driver_id]
        for gateway in [g for g, at in self.last_poll.items() if now - at > GATEWAY_SILENT_S]:
            log.info("cell %s: front door %s stopped polling; dropping its %d messages",
                     self.cell_id, gateway, len(self.outbox.get(gateway, ())))
            for mapping in (self.last_poll, self.outbox, self.wakeups):
                mapping.pop(gateway, None)
            for driver_id in [d for d, g in self.driver_gateway.items() if g == gateway]:
                del self.driver_gateway[driver_id]

    # Commands ----------------------------------------------------------------

    async def _execute(self, commands: list[Command]) -> list[dict]:
        """Carry out the core's commands; return the error frames for the calling driver."""
        errors: list[dict] = []
        for command in commands:
            log.debug("cell %s: %s", self.cell_id, command)
            if isinstance(command, SendToDriver):
                self._send(command.driver_id, command.message)
            elif isinstance(command, PersistAssignment):
                ok, reason = await self._persist_assignment(command)
                await self._execute(self.core.assignment_persisted(command.job_id, ok, reason))
            elif isinstance(command, PersistOrderEvent):
                error = await self._persist_order_event(command)
                if error:
                    errors.append(error)
        return errors

    def _send(self, driver_id: str, message: dict) -> None:
        if message.get("type") == "offer":
            self.metrics.offer()
        gateway = self.driver_gateway.get(driver_id)
        if gateway is None:
            return  # the driver has no socket anywhere; offers to it expire and move on
        self.outbox[gateway].append((driver_id, message))
        self.wakeups[gateway].set()

    async def _persist_assignment(self, command: PersistAssignment) -> tuple[bool, str]:
        from server.errors import ApiError
        from server.store.orders import apply_event_on

        try:
            # The driver's row exists: the front door creates it when the driver connects.
            async with self.pool.acquire() as conn, conn.transaction():
                for order_id in command.order_ids:
                    await apply_event_on(
                        conn, order_id, Event.ASSIGN, actor=Actor.SYSTEM, actor_label=f"system:{actor_name(self.cell_id)}",
                        arguments=(command.driver_id, command.job_id),
                        payload={"driver_id": command.driver_id, "job_id": command.job_id},
                    )
            return True, ""
        except ApiError as exc:
            log.info("cell %s: assignment %s refused: %s", self.cell_id, command.job_id, exc.message)
            return False, exc.message

    async def _persist_order_event(self, command: PersistOrderEvent) -> dict | None:
        from server.errors import ApiError
        from server.store.orders import apply_event

        event = _ORDER_EVENTS[command.event]
        by_system = event is Event.UNASSIGN
        try:
            await apply_event(
                self.pool, command.order_id, event,
                actor=Actor.SYSTEM if by_system else Actor.DRIVER,
                actor_label=f"system:{actor_name(self.cell_id)}" if by_system else f"driver:{command.driver_id}",
                payload={"driver_id": command.driver_id, **({"reason": command.reason} if command.reason else {})},
                expected_driver=command.driver_id,
            )
            return None
        except ApiError as exc:
            log.warning("cell %s: %s on order %s refused: %s", self.cell_id, command.event, command.order_id, exc.message)
            return {"type": "error", "code": exc.code, "message": exc.message}

    # Calls from front doors ------------------------------------------------------

    async def push_gps(self, gateway_id: str, fixes: list[tuple]) -> int:
        """A batch of fixes ``(driver_id, lat, lng, heading, speed, capacity, received_at)`` from one gateway.

        ``received_at`` (the front door's clock when the fix arrived, optional)
        measures the GPS lag exported as a metric.
        """
        await self._open()
        now = time.time()
        lags = []
        for driver_id, lat, lng, heading, speed, capacity, *received in fixes:
            if self.departed_until.get(driver_id, 0.0) > now:
                log.debug("cell %s: fix of departed driver %s ignored", self.cell_id, driver_id)
                continue
            self.driver_gateway[driver_id] = gateway_id
            self.core.driver_seen(driver_id, lat, lng, now, capacity=capacity, heading=heading, speed=speed)
            if received and received[0] is not None:
                lags.append(max(0.0, now - received[0]))
        self.metrics.fixes(len(fixes), lags)
        return len(fixes)

    async def poll(self, gateway_id: str, timeout_s: float = 5.0) -> list[tuple[str, dict]]:
        """Messages for drivers on ``gateway_id``; waits up to ``timeout_s`` for the first one."""
        await self._open(arrival=False)
        self.last_poll[gateway_id] = time.time()
        wakeup = self.wakeups[gateway_id]
        if not self.outbox[gateway_id]:
            try:
                await asyncio.wait_for(wakeup.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        wakeup.clear()
        if self.retired:
            raise CellRetired(f"cell {self.cell_id} has retired; open it anew")
        self.last_poll[gateway_id] = time.time()
        messages, self.outbox[gateway_id] = self.outbox[gateway_id], []
        return messages

    async def driver_message(self, gateway_id: str, driver_id: str, kind: str, fields: dict,
                             fix: tuple | None = None) -> list[dict]:
        """A driver's accept, decline, at-restaurant, picked-up, delivered or offline; returns error frames.

        ``fix`` is the driver's latest GPS fix not yet pushed, applied first.
        """
        await self._open()
        if fix is not None:
            await self.push_gps(gateway_id, [fix])
        now = time.time()
        self.driver_gateway[driver_id] = gateway_id
        core = self.core
        try:
            if kind == "accept":
                commands = core.accept(driver_id, fields["offer_id"], now)
            elif kind == "decline":
                commands = core.decline(driver_id, fields["offer_id"], now)
            elif kind == "at_restaurant":
                commands = core.job_event(driver_id, fields["job_id"], DriverEvent.ARRIVE)
            elif kind == "picked_up":
                commands = core.job_event(driver_id, fields["job_id"], DriverEvent.PICK_UP)
            elif kind == "delivered":
                commands = core.delivered(driver_id, fields["order_id"])
            elif kind == "offline":
                core.driver_offline(driver_id, now)
                commands = []
            else:
                return [{"type": "error", "code": "unknown_message", "message": f"cells do not handle {kind!r}"}]
        except CellError as exc:
            return [{"type": "error", "code": exc.code, "message": exc.message}]
        except Exception as exc:  # an illegal driver transition: refuse, keep the cell alive
            return [{"type": "error", "code": "illegal_transition", "message": str(exc)}]
        return await self._execute(commands)

    async def add_order(self, order: dict) -> None:
        """A newly placed order (idempotent); matched at once so the offer goes out without waiting."""
        await self._open()
        self.core.add_order(LiveOrder(**order))
        await self._tick()

    async def cancel_order(self, order_id: int, reason: str) -> None:
        await self._open()
        await self._execute(self.core.withdraw_order(order_id, reason))

    async def revise_ready(self, order_id: int, ready_at: float) -> None:
        await self._open()
        self.core.revise_ready(order_id, ready_at)

    async def remove_driver(self, driver_id: str) -> bool:
        """Hand a driver over to another cell; refused (False) while it has an offer or a job."""
        await self._open()
        removed = self.core.remove_driver(driver_id) is not None
        log.debug("cell %s: hand-over of %s %s", self.cell_id, driver_id, "done" if removed else "refused")
        if removed:
            self.driver_gateway.pop(driver_id, None)
            self.departed_until[driver_id] = time.time() + DEPARTED_FIX_GRACE_S
        return removed

    async def lend_driver(self, lat: float, lng: float, radius_m: float, borrower: str) -> dict | None:
        """Give the nearest idle driver within ``radius_m`` to the neighbouring cell ``borrower`` (atomically).

        The driver's front door hears of the move from this cell, which it
        already polls ("rehome"), and starts polling the borrower.
        """
        await self._open(arrival=False)
        driver = self.core.nearest_idle(lat, lng, radius_m)
        if driver is None or self.core.remove_driver(driver.id) is None:
            return None
        log.debug("cell %s: lent driver %s to %s", self.cell_id, driver.id, borrower)
        self.departed_until[driver.id] = time.time() + DEPARTED_FIX_GRACE_S
        self.stats["lent"] += 1
        self._send(driver.id, {"type": "rehome", "cell": borrower})
        return {"id": driver.id, "lat": driver.lat, "lng": driver.lng, "capacity": driver.capacity,
                "gateway": self.driver_gateway.pop(driver.id, None)}

    async def nearest_drivers(self, lat: float, lng: float, radius_m: float, k: int) -> dict:
        """This cell's ``k`` nearest available drivers within ``radius_m``, nearest first (ties: lower id).

        Returns ``{"cell", "drivers": [{"id", "lat", "lng", "distance_m"}], "compute_s", "compute_cpu_s"}``:
        the wall-clock and CPU time spent answering inside the actor (search
        and reply), without the Ray round trip. A disk reaching into
        neighbouring cells needs their answers too: ask each and merge by
        (distance, id).
        """
        await self._open(arrival=False)
        started, started_cpu = time.perf_counter(), time.thread_time()
        drivers = [{"id": hit.driver.id, "lat": hit.driver.lat, "lng": hit.driver.lng, "distance_m": hit.distance_m}
                   for hit in self.core.nearest_available(lat, lng, radius_m, k)]
        return {"cell": self.cell_id, "drivers": drivers, "compute_s": time.perf_counter() - started,
                "compute_cpu_s": time.thread_time() - started_cpu}

    async def load(self) -> dict:
        """What an operator sees of this cell (also exported as metrics), and the node hosting it."""
        import ray

        return {"cell": self.cell_id, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                **self.core.load(), **self.metrics.summary(), **self.stats}


def cell_actor_class():
    """The Ray actor class: restarted on failure, its calls retried across restarts."""
    import ray

    return ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)(CellActor)
