"""The cell actor: the I/O shell around ``dispatch.cell.CellCore`` for one H3 cell.

One actor per H3 cell at a configurable resolution, ``DEFAULT_CELL_RES`` unless
``HEXDISPATCH_CELL_RES`` says otherwise (named ``cell-<h3 index>`` so the Ray
dashboard shows which cell is which). It owns the live state of its cell,
runs the matcher every tick, persists every decision in Postgres, and hands
messages for drivers to the front-door process (gateway) holding each
driver's socket, which collects them by long-polling :meth:`CellActor.poll`.

On (re)start it rebuilds its pending and active orders from Postgres; drivers
re-appear with their next GPS fix. No failure to write to Postgres is fatal:
a decision that could not be recorded is rolled back (the driver is told,
with a retryable ``unavailable`` error when it was the one asking), and a
periodic sweep, brought forward after any failed write, makes memory agree
with Postgres both ways (``CellCore.reconcile``), so an order whose
notification was lost is still dispatched and none stays half-assigned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass

import h3.api.basic_int as h3
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from actors.metrics import CellMetrics
from dispatch.cell import (
    CellCore,
    CellError,
    CellParams,
    Command,
    GiveEstimate,
    LiveOrder,
    PersistAssignment,
    PersistOrderEvent,
    SendToDriver,
    StoredOrder,
)
from dispatch.cells import descendant_range, neighbours_nearest_first, owner_cell
from dispatch.eta import Estimate, live_calibration, warm_up
from dispatch.lifecycle import TRANSITIONS, Actor, DriverEvent, Event
from dispatch.retirement import IdleWatch
from runtime.gc_watch import freeze_survivors
from store.errors import StoreError
from store.orders import ACTIVE_ORDER
import wire

log = logging.getLogger("hexdispatch.cell")

#: H3 resolution of a cell actor. Resolution 6 cells are about 36 km^2 (3.7 km
#: edges): a few minutes' drive across, so most pickups are matched inside one
#: cell, while a metro area needs tens of actors rather than thousands.
DEFAULT_CELL_RES = 6
NAMESPACE = "hexdispatch"
#: How often a cell sets its Ray gauges (see ``actors.metrics``).
METRICS_EXPORT_S = 2.0
#: A front door that has not polled for this long is gone: its undelivered messages are dropped.
GATEWAY_SILENT_S = 60.0
#: A write to Postgres is retried (transient failures: a lost connection, a serialization failure) for this
#: long before the decision behind it is rolled back; each attempt may take at most ``WRITE_TIMEOUT_S``.
WRITE_RETRY_S = 1.5
WRITE_TIMEOUT_S = 5.0
#: After a failed write or sweep, the next sweep (which repairs what memory and Postgres disagree on) comes
#: this soon, doubling per further failure up to the regular sweep interval.
REPAIR_SOON_S = 0.5
#: What a driver is told when its reply could not be recorded (it changed nothing; it may try again).
UNAVAILABLE = wire.error_frame("unavailable", "dispatch could not record this now; nothing changed, try again")
#: A retiring cell answers for this long (every call refused with CellRetired) before its process exits.
RETIRE_GRACE_S = 0.5



@dataclass(frozen=True)
class Rehome:
    """To the front doors, not the driver: the driver now belongs to ``cell`` (a neighbour borrowed it)."""

    cell: str


_ORDER_EVENTS = {e.value: e for e in (Event.ARRIVE, Event.PICK_UP, Event.DELIVER, Event.UNASSIGN)}
#: The courier status each order event leaves (how a retried write sees that an earlier attempt committed).
_EVENT_COURIER = {name: TRANSITIONS[event].courier_to.value for name, event in _ORDER_EVENTS.items()}
#: A driver's reports of its job, and the driver event of each (``None``: a delivery, by order).
_REPORTS = {"at_restaurant": DriverEvent.ARRIVE, "picked_up": DriverEvent.PICK_UP, "delivered": None}

LIVE_ORDER_SELECT = """
    SELECT o.id, o.restaurant_id, r.latitude AS restaurant_lat, r.longitude AS restaurant_lng,
           o.dropoff_lat, o.dropoff_lng, extract(epoch FROM o.placed_at) AS placed_at,
           extract(epoch FROM coalesce(least(o.ready_at, o.ready_estimate_at), o.ready_estimate_at)) AS ready_at,
           o.courier_status, o.driver_id, o.job_id, o.cancelled, o.eta
    FROM orders o JOIN restaurants r ON r.id = o.restaurant_id
"""
#: Every order of a cell still to be delivered ($1, $2: the cell's range of restaurant cells).
LIVE_ORDERS_SQL = LIVE_ORDER_SELECT + f"""
    WHERE {ACTIVE_ORDER} AND r.h3_cell BETWEEN $1 AND $2
"""
#: One order, as a cell sees it.
LIVE_ORDER_SQL = LIVE_ORDER_SELECT + " WHERE o.id = $1"
#: Orders by id ($1), live or not.
ORDERS_BY_ID_SQL = LIVE_ORDER_SELECT + " WHERE o.id = ANY($1::bigint[])"


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
    """The live order of a :data:`LIVE_ORDER_SELECT` row, with the estimate its customer holds."""
    order = _live_order(row, float(row["placed_at"]), float(row["ready_at"]))
    if row["eta"] is not None:
        order.estimate = Estimate.from_json(row["eta"])
    return order


def stored_order(row) -> StoredOrder:
    """What Postgres holds of an order, from a :data:`LIVE_ORDER_SELECT` row."""
    return StoredOrder(live_order(row), row["courier_status"], row["driver_id"], row["job_id"], row["cancelled"])


def placed_order(row) -> LiveOrder:
    """The live order of an order row just placed (``store.orders.place_order``): not ready yet,
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
        self.core = CellCore(cell_id, params, live_calibration())
        self.tick_s = tick_s
        self.sweep_s = sweep_s
        self.pool = None
        self.outbox: dict[str, list[tuple[str, wire.ServerFrame | Rehome]]] = defaultdict(list)
        self.wakeups: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.driver_gateway: dict[str, str] = {}
        self.started: asyncio.Task | None = None
        self.freezer: asyncio.Task | None = None
        self.metrics = CellMetrics(cell_id)
        self.stats = {"borrowed": 0, "lent": 0, "writes_failed": 0, "estimates_given": 0}
        self.last_poll: dict[str, float] = {}
        self._lock = None
        # Drivers that left this cell: fixes still routed here are ignored until the front door follows.
        self.neighbours: dict[str, object] = {}
        self.writing: set[int] = set()  # orders with a write to Postgres in flight
        self.giving: asyncio.Task | None = None  # the tick's batch of delivery estimates being stored
        self.estimating: set[int] = set()  # orders whose delivery estimate is being stored
        self._touched: set[int] | None = None  # orders written or changed while a sweep reads Postgres
        self.next_sweep = time.time() + sweep_s
        self.repair_failures = 0
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
                from store.pool import create_pool

                # A metro runs tens of cells against one Postgres: a quiet cell gives its connections back.
                if self.pool is None:  # kept when the rebuild below fails (Postgres down): the next call retries
                    self.pool = await create_pool(self.dsn, min_size=0, max_size=3, idle_close_s=10.0)
                await self._rebuild(time.time())
                await asyncio.to_thread(warm_up)
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
        last_export = time.time()
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._tick()
                if self.idle.may_retire(self._holds_nothing(), time.time()) and await self._postgres_agrees_empty():
                    await self._retire()
                    return
                if time.time() - last_export >= METRICS_EXPORT_S:
                    last_export = time.time()
                    self.metrics.export(last_export, self.core.load())
            except Exception:  # a failed tick must not kill the cell: log it and tick again
                log.exception("cell %s tick failed", self.cell_id)
            if time.time() >= self.next_sweep:
                try:
                    await self._sweep()
                except Exception as exc:  # Postgres unreachable: sweep again soon, backing off
                    self.next_sweep = time.time() + self._repair_delay()
                    log.warning("cell %s: sweep failed (%s: %s); next in %.1f s", self.cell_id,
                                type(exc).__name__, exc, self.next_sweep - time.time())
                else:
                    self.repair_failures = 0
                    self.next_sweep = time.time() + self.sweep_s

    def _repair_soon(self) -> None:
        """Memory and Postgres may disagree now: bring the next sweep forward (backing off while it fails)."""
        self.next_sweep = min(self.next_sweep, time.time() + self._repair_delay())

    def _repair_delay(self) -> float:
        """Seconds until the next sweep after one more failure: doubling from ``REPAIR_SOON_S``, jittered, capped."""
        delay = min(self.sweep_s, REPAIR_SOON_S * 2 ** self.repair_failures)
        self.repair_failures += 1
        return delay * random.uniform(0.5, 1.0)

    def _holds_nothing(self) -> bool:
        """Nothing here would be lost by retiring: no driver, order, offer or job, no message waiting for a front
        door, no write to Postgres in flight."""
        return self.core.is_empty() and not any(self.outbox.values()) and not self.writing

    async def _postgres_agrees_empty(self) -> bool:
        """Whether the cell may retire now, asked of Postgres: a sweep takes in any active order of this cell that
        memory missed (a placement whose ``add_order`` never arrived, a job adopted after a restart), and the
        cell retires only if it still holds nothing after it. If Postgres cannot answer, it does not retire
        (and stays quiet for another ``idle_retire_s`` before asking again)."""
        try:
            await self._sweep()
        except Exception as exc:  # noqa: BLE001 - Postgres unreachable: cannot tell, so stay
            log.info("cell %s: not retiring, Postgres did not answer (%s: %s)", self.cell_id, type(exc).__name__, exc)
            self.idle.arrived(time.time())
            return False
        return self.idle.may_retire(self._holds_nothing(), time.time())

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
        for order in self.core.orders_to_borrow_for(now):
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
        return borrowed

    def _neighbours_nearest_first(self, lat: float, lng: float) -> list[tuple[str, object]]:
        """(cell id, handle) of the live neighbouring cell actors, nearest (to the point) first."""
        import ray

        handles = []
        for cell in neighbours_nearest_first(h3.str_to_int(self.cell_id), lat, lng):
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
        """Forget silent front doors; make memory agree with Postgres (``CellCore.reconcile``).

        Orders written, or changed by a call, while Postgres is being read are
        left for the next sweep: the rows read may predate that change.
        """
        now = time.time()
        for gateway in [g for g, at in self.last_poll.items() if now - at > GATEWAY_SILENT_S]:
            log.info("cell %s: front door %s stopped polling; dropping its %d messages",
                     self.cell_id, gateway, len(self.outbox.get(gateway, ())))
            for mapping in (self.last_poll, self.outbox, self.wakeups):
                mapping.pop(gateway, None)
            for driver_id in [d for d, g in self.driver_gateway.items() if g == gateway]:
                del self.driver_gateway[driver_id]
        lo, hi = descendant_range(h3.str_to_int(self.cell_id))
        self._touched = set()
        try:
            rows = list(await self.pool.fetch(LIVE_ORDERS_SQL, lo, hi))
            live = {row["id"] for row in rows}
            others = [order_id for order_id in self.core.orders if order_id not in live]
            if others:
                rows += await self.pool.fetch(ORDERS_BY_ID_SQL, others)
            unsettled = self._touched | self.writing
        finally:
            self._touched = None
        await self._execute(self.core.reconcile([stored_order(row) for row in rows], unsettled, time.time()))

    # Commands ----------------------------------------------------------------

    async def _execute(self, commands: list[Command]) -> list[wire.Error]:
        """Carry out the core's commands; return the error frames for the calling driver."""
        errors: list[wire.Error] = []
        for command in commands:
            log.debug("cell %s: %s", self.cell_id, command)
            if isinstance(command, SendToDriver):
                self._send(command.driver_id, command.message)
            elif isinstance(command, PersistAssignment):
                error = await self._write(command.order_ids,
                                          lambda conn, retried: self._record_assignment(conn, command, retried))
                if isinstance(error, StoreError):  # Postgres knows something of these orders that we do not
                    log.info("cell %s: assignment %s refused: %s", self.cell_id, command.job_id, error)
                    self._repair_soon()
                reason = "" if error is None else error.message if isinstance(error, StoreError) else "unavailable"
                errors += await self._execute(self.core.assignment_persisted(command.job_id, error is None, reason))
                if error is not None and not isinstance(error, StoreError):
                    errors.append(UNAVAILABLE)
            elif isinstance(command, GiveEstimate):
                continue  # given together below
            elif isinstance(command, PersistOrderEvent):
                # Only the cell's own decisions come here (a lost driver's orders, repairs); a failed one is
                # found again by the next sweep, which comes early after a failure.
                error = await self._write([command.order_id],
                                          lambda conn, retried: self._record_events(conn, [command], retried))
                if isinstance(error, StoreError):
                    log.warning("cell %s: %s on order %s refused: %s", self.cell_id, command.event,
                                command.order_id, error.message)
        estimates = [c for c in commands if isinstance(c, GiveEstimate)]
        # Off the tick's path: a slow or unreachable Postgres must not hold up matching. One batch at a time;
        # estimates skipped meanwhile were not given and are worked out again at the next pass.
        if estimates and (self.giving is None or self.giving.done()):
            self.giving = self._start_giving(estimates)
        return errors

    def _start_giving(self, estimates: list[GiveEstimate]) -> asyncio.Task | None:
        """Start storing these estimates (:meth:`_give_estimates`), but for orders whose estimate is already being
        stored; the task answers whether they were stored (None: nothing to store)."""
        estimates = [c for c in estimates if c.order_id not in self.estimating]
        if not estimates:
            return None
        self.estimating.update(c.order_id for c in estimates)  # now, not when the task first runs
        return asyncio.get_running_loop().create_task(self._give_estimates(estimates))

    async def _give_estimates(self, estimates: list[GiveEstimate]) -> bool:
        """Store the estimates (``estimate`` events, one transaction): only then are they given. One attempt: an
        estimate not stored is simply not given, and the next pass works it out again."""
        try:
            return await self._store_estimates(estimates)
        finally:
            self.estimating.difference_update(c.order_id for c in estimates)

    async def _store_estimates(self, estimates: list[GiveEstimate]) -> bool:
        from store.orders import apply_event_on

        given: list[GiveEstimate] = []

        async def record(conn) -> None:
            given.clear()
            for command in estimates:
                estimate = command.estimate.to_json()
                try:
                    await apply_event_on(conn, command.order_id, Event.ESTIMATE, actor=Actor.SYSTEM,
                                         actor_label=f"system:{actor_name(self.cell_id)}", arguments=(estimate,),
                                         payload=estimate)
                except StoreError:  # finished meanwhile (delivered, cancelled): nothing more to promise
                    continue
                given.append(command)

        try:
            await asyncio.wait_for(self._transaction(lambda conn, _retried: record(conn), False), WRITE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - Postgres unavailable: given at a later pass
            log.warning("cell %s: estimates of %d orders not stored (%s: %s)", self.cell_id, len(estimates),
                        type(exc).__name__, exc)
            self.stats["writes_failed"] += 1
            return False
        self.core.estimates_given(given)
        self.stats["estimates_given"] += len(given)
        return True

    def _send(self, driver_id: str, message: wire.ServerFrame | Rehome) -> None:
        if isinstance(message, wire.OfferFrame):
            self.metrics.offer()
        gateway = self.driver_gateway.get(driver_id)
        if gateway is None:
            return  # the driver has no socket anywhere; offers to it expire and move on
        self.outbox[gateway].append((driver_id, message))
        self.wakeups[gateway].set()

    # Writes to Postgres ------------------------------------------------------

    def _touch(self, order_ids) -> None:
        """These orders change now: a sweep reading Postgres meanwhile leaves them alone."""
        if self._touched is not None:
            self._touched.update(order_ids)

    async def _write(self, order_ids, work) -> Exception | None:
        """Run ``await work(conn, retried)`` in one transaction; ``None`` once committed, else why not.

        A refusal (``StoreError``) is returned as it is. Any other failure
        (Postgres down or restarting, a connection lost mid-transaction, a
        closed pool, a timeout, a serialization failure) is retried with
        back-off for ``WRITE_RETRY_S``, then returned, and the next sweep is
        brought forward to repair whatever memory and Postgres then disagree on.
        ``retried`` tells ``work`` that an earlier attempt may have committed.
        """
        order_ids = list(order_ids)
        self._touch(order_ids)
        self.writing.update(order_ids)
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, Exception) and not isinstance(exc, StoreError)),
            stop=stop_after_delay(WRITE_RETRY_S), wait=wait_exponential_jitter(initial=0.05, max=0.5, jitter=0.05),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    retried = attempt.retry_state.attempt_number > 1
                    await asyncio.wait_for(self._transaction(work, retried), WRITE_TIMEOUT_S)
        except StoreError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - whatever kept Postgres from recording it
            log.warning("cell %s: write of orders %s failed (%s: %s)", self.cell_id, order_ids, type(exc).__name__, exc)
            self.stats["writes_failed"] += 1
            self._repair_soon()
            return exc
        finally:
            self.writing.difference_update(order_ids)
            self._touch(order_ids)
        return None

    async def _transaction(self, work, retried: bool) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await work(conn, retried)

    async def _record_assignment(self, conn, command: PersistAssignment, retried: bool) -> None:
        from store.orders import apply_event_on

        recorded: set[int] = set()
        if retried:
            recorded = {row["id"] for row in await conn.fetch(
                "SELECT id FROM orders WHERE id = ANY($1::bigint[]) AND job_id = $2",
                list(command.order_ids), command.job_id)}
        # The driver's row exists: the front door creates it when the driver connects.
        for order_id in command.order_ids:
            if order_id not in recorded:
                await apply_event_on(
                    conn, order_id, Event.ASSIGN, actor=Actor.SYSTEM, actor_label=f"system:{actor_name(self.cell_id)}",
                    arguments=(command.driver_id, command.job_id),
                    payload={"driver_id": command.driver_id, "job_id": command.job_id},
                )

    async def _record_events(self, conn, commands: list[PersistOrderEvent], retried: bool) -> None:
        from store.orders import apply_event_on

        recorded: set[int] = set()
        if retried:
            rows = await conn.fetch("SELECT id, courier_status, driver_id FROM orders WHERE id = ANY($1::bigint[])",
                                    [c.order_id for c in commands])
            now_at = {row["id"]: (row["courier_status"], row["driver_id"]) for row in rows}
            recorded = {c.order_id for c in commands if now_at.get(c.order_id) == (
                _EVENT_COURIER[c.event], None if c.event == "unassign" else c.driver_id)}
        for command in commands:
            if command.order_id in recorded:
                continue
            event = _ORDER_EVENTS[command.event]
            by_system = event is Event.UNASSIGN
            await apply_event_on(
                conn, command.order_id, event,
                actor=Actor.SYSTEM if by_system else Actor.DRIVER,
                actor_label=f"system:{actor_name(self.cell_id)}" if by_system else f"driver:{command.driver_id}",
                payload={"driver_id": command.driver_id, **({"reason": command.reason} if command.reason else {})},
                expected_driver=command.driver_id,
            )

    async def _report(self, driver_id: str, kind: str, fields: dict) -> list[wire.Error]:
        """A driver's report on its job: recorded in Postgres first, then applied here (or refused, changing nothing)."""
        core, event = self.core, _REPORTS[kind]
        if event is None:
            planned = core.check_delivered(driver_id, fields["order_id"])
        else:
            planned = core.check_job_event(driver_id, fields["job_id"], event)
        error = await self._write([c.order_id for c in planned],
                                  lambda conn, retried: self._record_events(conn, planned, retried))
        if isinstance(error, StoreError):
            log.warning("cell %s: %s of %s refused: %s", self.cell_id, kind, driver_id, error.message)
            return [wire.error_frame(error.code, error.message)]
        if error is not None:
            return [UNAVAILABLE]
        if event is None:
            core.delivered(driver_id, fields["order_id"])
        else:
            core.job_event(driver_id, fields["job_id"], event, now=time.time())
        return []

    # Calls from front doors ------------------------------------------------------

    async def push_gps(self, gateway_id: str, fixes: list[tuple]) -> int:
        """A batch of fixes ``(driver_id, lat, lng, heading, speed, capacity, received_at)`` from one gateway.

        ``received_at`` (the front door's clock when the fix arrived, optional)
        measures the GPS lag exported as a metric.
        """
        await self._open()
        now = time.time()
        lags = []
        announced: list[Command] = []
        for driver_id, lat, lng, heading, speed, capacity, *received in fixes:
            if not self.core.accepts_fix(driver_id, now):
                log.debug("cell %s: fix of departed driver %s ignored", self.cell_id, driver_id)
                continue
            self.driver_gateway[driver_id] = gateway_id
            self.core.driver_seen(driver_id, lat, lng, now, capacity=capacity, heading=heading, speed=speed)
            announced += self.core.announce_restored(driver_id)
            if received and received[0] is not None:
                lags.append(max(0.0, now - received[0]))
        self.metrics.fixes(len(fixes), lags)
        await self._execute(announced)
        return len(fixes)

    async def driver_view(self, driver_id: str) -> dict | None:
        """The driver's live state here (``dispatch.cell.CellCore.driver_view``), for its ``welcome``."""
        await self._open(arrival=False)
        return self.core.driver_view(driver_id)

    async def poll(self, gateway_id: str, timeout_s: float = 5.0) -> list[tuple[str, wire.ServerFrame | Rehome]]:
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
                             fix: tuple | None = None) -> list[wire.Error]:
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
            elif kind in _REPORTS:
                return await self._report(driver_id, kind, fields)
            elif kind == "offline":
                core.driver_offline(driver_id, now)
                commands = []
            else:
                return [wire.error_frame("unknown_message", f"cells do not handle {kind!r}")]
        except CellError as exc:
            return [wire.error_frame(exc.code, exc.message)]
        except Exception as exc:  # an illegal driver transition: refuse, keep the cell alive
            return [wire.error_frame("illegal_transition", str(exc))]
        return await self._execute(commands)

    async def add_order(self, order: dict) -> dict | None:
        """A newly placed order (idempotent); its delivery estimate is stored and returned (the promise; None if it
        could not be stored, or was given before), and it is matched at once so the offer goes out without waiting."""
        await self._open()
        self._touch([order["id"]])
        self.core.add_order(LiveOrder(**order))
        estimates = self.core.estimates(time.time(), only=order["id"])
        # The promise is stored while the tick matches: an order that can be matched at once is offered without
        # waiting for Postgres. The order is marked as being estimated first, so the tick does not give it twice.
        giving = self._start_giving(estimates)
        await self._tick()
        return estimates[0].estimate.to_json() if giving is not None and await giving else None

    async def cancel_order(self, order_id: int, reason: str) -> None:
        await self._open()
        self._touch([order_id])
        await self._execute(self.core.withdraw_order(order_id, reason))

    async def revise_ready(self, order_id: int, ready_at: float) -> None:
        await self._open()
        self.core.revise_ready(order_id, ready_at)

    async def remove_driver(self, driver_id: str) -> bool:
        """Hand a driver over to another cell; refused (False) while it has an offer or a job."""
        await self._open()
        removed = self.core.depart(driver_id, time.time()) is not None
        log.debug("cell %s: hand-over of %s %s", self.cell_id, driver_id, "done" if removed else "refused")
        if removed:
            self.driver_gateway.pop(driver_id, None)
        return removed

    async def lend_driver(self, lat: float, lng: float, radius_m: float, borrower: str) -> dict | None:
        """Give the nearest idle driver within ``radius_m`` to the neighbouring cell ``borrower`` (atomically).

        The driver's front door hears of the move from this cell, which it
        already polls ("rehome"), and starts polling the borrower.
        """
        await self._open(arrival=False)
        driver = self.core.lend_nearest_idle(lat, lng, radius_m, time.time())
        if driver is None:
            return None
        log.debug("cell %s: lent driver %s to %s", self.cell_id, driver.id, borrower)
        self.stats["lent"] += 1
        self._send(driver.id, Rehome(borrower))
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


    async def ops_view(self, max_drivers: int) -> dict:
        """:meth:`load` with what the ops map draws of this cell (``dispatch.opsmap.cell_view``)."""
        from dispatch.opsmap import cell_view

        return {**await self.load(), **cell_view(self.core, max_drivers)}

    async def eta_basis(self) -> dict:
        """What front doors quote delivery times at search from (``server.gateway.eta_board``):
        ``{"cell", **CourierAvailability.to_lists()}`` (``dispatch.eta_quote``: when and where this cell's
        couriers are free once its known work is done; minutes of unix time). Does not delay retiring."""
        await self._open(arrival=False)
        return {"cell": self.cell_id, **self.core.courier_availability(time.time()).to_lists()}


def cell_actor_class():
    """The Ray actor class: restarted on failure, its calls retried across restarts."""
    import ray

    return ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0)(CellActor)
