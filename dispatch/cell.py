"""The live state of one H3 cell, sans I/O: drivers, pending orders, offers and jobs.

A :class:`CellCore` is what a cell actor (``actors/cell.py``) holds. Every
input is a method call carrying the current time ``now`` (seconds); every
output is a list of :class:`Command` values that the actor executes: a
message to send to a driver, or a change to persist in Postgres. The core
never does I/O and never reads the clock, so a whole day of a cell can be
replayed in a test.

The flow of one order::

    add_order ─▶ pending ─tick─▶ offered ─accept─▶ assigning ─persisted─▶ assigned
                   ▲               │ decline / expiry        │ refused
                   └───────────────┴─────────────────────────┘

Driver statuses move only through ``dispatch.lifecycle.apply_driver``; order
lifecycles are persisted by the actor through ``dispatch.lifecycle.apply``.
Pending orders sit in a heap keyed by their urgency (best slack over the
cell's drivers, in minutes, from the latest tick), so when more orders wait
than one tick may consider, the most urgent go first.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from dispatch.geo import haversine_m
from dispatch.lifecycle import DriverEvent, DriverStatus, apply_driver
from dispatch.matcher import Drivers, MatchParams, Orders, TravelModel, match


@dataclass(frozen=True)
class CellParams:
    """Every knob of a live cell, with its default and why."""

    offer_ttl_s: float = 20.0
    """How long a driver has to accept an offer before it goes to the next best driver."""
    heartbeat_ttl_s: float = 30.0
    """A driver silent this long is lost: offline, and its orders re-dispatched."""
    speed_kmh: float = 25.0
    """Average road speed of the great-circle travel model."""
    max_orders_per_tick: int = 1000
    """Most pending orders one tick considers (the most urgent first)."""
    policy: str = "slack"
    """Matcher policy (see ``dispatch.matcher``)."""
    borrow_after_s: float = 3.0
    """An order no local driver took for this long may borrow an idle driver of a neighbouring cell."""
    borrow_radius_m: float = 3000.0
    """How far from the restaurant a borrowed driver may be."""
    match: MatchParams = field(default_factory=MatchParams)


class OrderPhase(str, Enum):
    PENDING = "pending"
    OFFERED = "offered"
    ASSIGNING = "assigning"
    ASSIGNED = "assigned"
    PICKED_UP = "picked_up"


@dataclass
class LiveOrder:
    id: int
    restaurant_id: int
    restaurant_lat: float
    restaurant_lng: float
    dropoff_lat: float
    dropoff_lng: float
    placed_at: float
    ready_at: float
    phase: OrderPhase = OrderPhase.PENDING
    driver_id: str | None = None
    urgency: float = -math.inf
    declined_by: set[str] = field(default_factory=set)


@dataclass
class LiveDriver:
    id: str
    lat: float
    lng: float
    last_seen: float
    capacity: int = 1
    status: DriverStatus = DriverStatus.IDLE
    heading: float | None = None
    speed: float | None = None
    offer_id: str | None = None
    job_id: str | None = None


@dataclass
class Offer:
    id: str
    driver_id: str
    order_ids: list[int]
    expires_at: float


@dataclass
class Job:
    id: str
    driver_id: str
    order_ids: list[int]
    delivered: set[int] = field(default_factory=set)


# Commands: what the actor must do. --------------------------------------------


@dataclass(frozen=True)
class SendToDriver:
    driver_id: str
    message: dict


@dataclass(frozen=True)
class PersistAssignment:
    """Assign ``order_ids`` to ``driver_id`` in one transaction; report with ``assignment_persisted``."""

    job_id: str
    driver_id: str
    order_ids: tuple[int, ...]


@dataclass(frozen=True)
class PersistOrderEvent:
    """Apply a lifecycle event (``arrive``, ``pick_up``, ``deliver``, ``unassign``) to an order."""

    order_id: int
    event: str
    driver_id: str
    reason: str = ""


Command = SendToDriver | PersistAssignment | PersistOrderEvent


class CellError(Exception):
    """An input the cell refuses (answered to the driver as an error frame)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class CellCore:
    """The drivers, orders, offers and jobs of one cell; see the module docstring."""

    def __init__(self, cell_id: str, params: CellParams | None = None):
        self.cell_id = cell_id
        self.params = params or CellParams()
        self.travel = TravelModel.great_circle(self.params.speed_kmh)
        self.drivers: dict[str, LiveDriver] = {}
        self.orders: dict[int, LiveOrder] = {}
        self.offers: dict[str, Offer] = {}
        self.jobs: dict[str, Job] = {}
        self._serial = 0

    # Identity ---------------------------------------------------------------

    def _next_id(self, kind: str, now: float) -> str:
        """An id unique across restarts of the cell (time moves on) and across cells."""
        self._serial += 1
        return f"{kind}-{self.cell_id}-{int(now * 1000)}-{self._serial}"

    # Drivers ----------------------------------------------------------------

    def driver_seen(
        self, driver_id: str, lat: float, lng: float, now: float, *, capacity: int = 1,
        heading: float | None = None, speed: float | None = None,
    ) -> None:
        """A GPS fix (or a handed-over driver): position and heartbeat; unknown drivers arrive idle."""
        driver = self.drivers.get(driver_id)
        if driver is None:
            driver = self.drivers[driver_id] = LiveDriver(driver_id, lat, lng, now, capacity)
        elif driver.status is DriverStatus.OFFLINE:
            driver.status = apply_driver(driver.status, DriverEvent.GO_ONLINE)
        driver.lat, driver.lng, driver.last_seen = lat, lng, now
        driver.heading, driver.speed, driver.capacity = heading, speed, capacity

    def driver_offline(self, driver_id: str, now: float) -> None:
        """The driver stops taking work (only while idle)."""
        driver = self._driver(driver_id)
        driver.status = apply_driver(driver.status, DriverEvent.GO_OFFLINE)

    def remove_driver(self, driver_id: str) -> LiveDriver | None:
        """Forget an idle or offline driver (it crossed into another cell)."""
        driver = self.drivers.get(driver_id)
        if driver is None or driver.status not in (DriverStatus.IDLE, DriverStatus.OFFLINE):
            return None
        return self.drivers.pop(driver_id)

    def nearest_idle(self, lat: float, lng: float, radius_m: float) -> LiveDriver | None:
        """The idle driver nearest to a point within ``radius_m``, if any (ties: lower id)."""
        best, best_m = None, radius_m
        for driver in sorted(self.drivers.values(), key=lambda d: d.id):
            if driver.status is DriverStatus.IDLE:
                metres = haversine_m(lat, lng, driver.lat, driver.lng)
                if metres <= best_m:
                    best, best_m = driver, metres
        return best

    def unoffered_orders(self, now: float, older_than_s: float) -> list[LiveOrder]:
        """Pending orders no driver of this cell has taken for ``older_than_s`` seconds, oldest first."""
        waiting = [o for o in self.orders.values()
                   if o.phase is OrderPhase.PENDING and now - o.placed_at >= older_than_s]
        return sorted(waiting, key=lambda o: (o.placed_at, o.id))

    def _driver(self, driver_id: str) -> LiveDriver:
        driver = self.drivers.get(driver_id)
        if driver is None:
            raise CellError("unknown_driver", "this cell does not know the driver; send a GPS fix first")
        return driver

    # Orders -----------------------------------------------------------------

    def add_order(self, order: LiveOrder) -> None:
        """A new order to dispatch (idempotent: a known order is left as it is)."""
        self.orders.setdefault(order.id, order)

    def revise_ready(self, order_id: int, ready_at: float) -> None:
        order = self.orders.get(order_id)
        if order is not None:
            order.ready_at = ready_at

    def withdraw_order(self, order_id: int, reason: str) -> list[Command]:
        """The order was cancelled: drop it, and release or recall its driver."""
        order = self.orders.pop(order_id, None)
        if order is None:
            return []
        commands: list[Command] = []
        for offer in [o for o in self.offers.values() if order_id in o.order_ids]:
            offer.order_ids.remove(order_id)
            if not offer.order_ids:
                commands += self._end_offer(offer, DriverEvent.DECLINE, notify=reason)
        if order.driver_id is not None and order.phase in (OrderPhase.ASSIGNED, OrderPhase.ASSIGNING):
            driver = self.drivers.get(order.driver_id)
            job = self.jobs.get(driver.job_id) if driver and driver.job_id else None
            if job is not None and order_id in job.order_ids:
                job.order_ids.remove(order_id)
                commands.append(SendToDriver(driver.id, {"type": "cancelled", "order_id": order_id, "reason": reason}))
                if not job.order_ids:
                    del self.jobs[job.id]
                    driver.job_id = None
                    driver.status = apply_driver(driver.status, DriverEvent.WITHDRAW)
        return commands

    def restore_job(self, job_id: str, driver_id: str, orders: list[LiveOrder], picked_up: bool,
                    at_restaurant: bool, now: float) -> None:
        """Rebuild a job persisted before a restart; the driver re-appears with its next GPS fix."""
        for order in orders:
            order.phase = OrderPhase.PICKED_UP if picked_up else OrderPhase.ASSIGNED
            order.driver_id = driver_id
            self.orders[order.id] = order
        self.jobs[job_id] = Job(job_id, driver_id, [o.id for o in orders])
        first = orders[0]
        status = (DriverStatus.DELIVERING if picked_up
                  else DriverStatus.AT_RESTAURANT if at_restaurant else DriverStatus.EN_ROUTE)
        self.drivers[driver_id] = LiveDriver(driver_id, first.restaurant_lat, first.restaurant_lng, now,
                                             status=status, job_id=job_id)

    # Offers -----------------------------------------------------------------

    def accept(self, driver_id: str, offer_id: str, now: float) -> list[Command]:
        """The driver takes the offer: its orders are persisted as assigned to it."""
        driver = self._driver(driver_id)
        offer = self.offers.get(offer_id)
        if offer is None or offer.driver_id != driver_id or driver.offer_id != offer_id:
            raise CellError("unknown_offer", "no such offer is open for this driver")
        if now > offer.expires_at:
            raise CellError("offer_expired", "the offer has expired")
        del self.offers[offer_id]
        driver.offer_id = None
        driver.status = apply_driver(driver.status, DriverEvent.ACCEPT)
        job = Job(self._next_id("job", now), driver_id, list(offer.order_ids))
        self.jobs[job.id] = job
        driver.job_id = job.id
        for order_id in job.order_ids:
            order = self.orders[order_id]
            order.phase, order.driver_id = OrderPhase.ASSIGNING, driver_id
        return [PersistAssignment(job.id, driver_id, tuple(job.order_ids))]

    def assignment_persisted(self, job_id: str, ok: bool, reason: str = "") -> list[Command]:
        """Postgres accepted (or refused) the assignment of a job."""
        job = self.jobs.get(job_id)
        if job is None:
            return []
        driver = self.drivers.get(job.driver_id)
        if ok:
            for order_id in job.order_ids:
                self.orders[order_id].phase = OrderPhase.ASSIGNED
            orders = [self._order_view(self.orders[i]) for i in job.order_ids]
            return [SendToDriver(job.driver_id, {"type": "assigned", "job_id": job.id, "orders": orders})]
        del self.jobs[job_id]
        for order_id in job.order_ids:
            order = self.orders.get(order_id)
            if order is not None:
                order.phase, order.driver_id = OrderPhase.PENDING, None
        commands: list[Command] = []
        if driver is not None and driver.job_id == job_id:
            driver.job_id = None
            driver.status = apply_driver(driver.status, DriverEvent.WITHDRAW)
            commands.append(SendToDriver(driver.id, {"type": "job_withdrawn", "job_id": job_id, "reason": reason}))
        return commands

    def decline(self, driver_id: str, offer_id: str, now: float) -> list[Command]:
        driver = self._driver(driver_id)
        offer = self.offers.get(offer_id)
        if offer is None or offer.driver_id != driver_id:
            raise CellError("unknown_offer", "no such offer is open for this driver")
        return self._end_offer(offer, DriverEvent.DECLINE)

    def _end_offer(self, offer: Offer, event: DriverEvent, notify: str | None = None) -> list[Command]:
        """Close an offer; its orders go back to pending and never again to this driver."""
        self.offers.pop(offer.id, None)
        for order_id in offer.order_ids:
            order = self.orders.get(order_id)
            if order is not None:
                order.phase = OrderPhase.PENDING
                order.declined_by.add(offer.driver_id)
        driver = self.drivers.get(offer.driver_id)
        if driver is not None and driver.offer_id == offer.id:
            driver.offer_id = None
            driver.status = apply_driver(driver.status, event)
        if notify is not None or event is DriverEvent.OFFER_EXPIRED:
            reason = notify or "expired"
            return [SendToDriver(offer.driver_id, {"type": "offer_withdrawn", "offer_id": offer.id, "reason": reason})]
        return []

    # Jobs -------------------------------------------------------------------

    def job_event(self, driver_id: str, job_id: str, event: DriverEvent) -> list[Command]:
        """The driver reports ``ARRIVE`` or ``PICK_UP`` for its job."""
        driver = self._driver(driver_id)
        job = self.jobs.get(job_id)
        if job is None or job.driver_id != driver_id or driver.job_id != job_id:
            raise CellError("unknown_job", "no such job is assigned to this driver")
        if any(self.orders[i].phase is OrderPhase.ASSIGNING for i in job.order_ids):
            raise CellError("not_yet_assigned", "the assignment is still being confirmed")
        driver.status = apply_driver(driver.status, event)
        order_event = {DriverEvent.ARRIVE: "arrive", DriverEvent.PICK_UP: "pick_up"}[event]
        if event is DriverEvent.PICK_UP:
            for order_id in job.order_ids:
                self.orders[order_id].phase = OrderPhase.PICKED_UP
        return [PersistOrderEvent(i, order_event, driver_id) for i in job.order_ids]

    def delivered(self, driver_id: str, order_id: int) -> list[Command]:
        driver = self._driver(driver_id)
        job = self.jobs.get(driver.job_id) if driver.job_id else None
        if job is None or order_id not in job.order_ids or order_id in job.delivered:
            raise CellError("unknown_order", "this order is not on the driver's current job")
        if driver.status is not DriverStatus.DELIVERING:
            raise CellError("not_picked_up", "an order is delivered only after pick-up")
        job.delivered.add(order_id)
        last = len(job.delivered) == len(job.order_ids)
        driver.status = apply_driver(driver.status, DriverEvent.DELIVER_LAST if last else DriverEvent.DELIVER_ONE)
        self.orders.pop(order_id, None)
        if last:
            del self.jobs[job.id]
            driver.job_id = None
        return [PersistOrderEvent(order_id, "deliver", driver_id)]

    # The tick ---------------------------------------------------------------

    def tick(self, now: float) -> list[Command]:
        """Expire offers, lose silent drivers, and offer the most urgent pending orders."""
        commands: list[Command] = []
        for offer in [o for o in self.offers.values() if now > o.expires_at]:
            commands += self._end_offer(offer, DriverEvent.OFFER_EXPIRED)
        for driver in [d for d in self.drivers.values() if now - d.last_seen > self.params.heartbeat_ttl_s]:
            commands += self._lose(driver)
        commands += self._match(now)
        return commands

    def _lose(self, driver: LiveDriver) -> list[Command]:
        """A silent driver goes offline; orders it had not picked up are re-dispatched.

        A driver with food in its bag keeps its job: it resumes on reconnect.
        """
        if driver.status in (DriverStatus.OFFLINE, DriverStatus.DELIVERING):
            return []
        commands: list[Command] = []
        if driver.offer_id is not None:
            commands += self._end_offer(self.offers[driver.offer_id], DriverEvent.OFFER_EXPIRED)
        job = self.jobs.pop(driver.job_id, None) if driver.job_id else None
        if job is not None:
            for order_id in job.order_ids:
                order = self.orders[order_id]
                order.phase, order.driver_id = OrderPhase.PENDING, None
                order.declined_by.add(driver.id)
                commands.append(PersistOrderEvent(order_id, "unassign", driver.id, reason="driver lost"))
            driver.job_id = None
        driver.status = apply_driver(driver.status, DriverEvent.LOST)
        return commands

    def _match(self, now: float) -> list[Command]:
        idle = [d for d in self.drivers.values() if d.status is DriverStatus.IDLE]
        pending = [o for o in self.orders.values() if o.phase is OrderPhase.PENDING]
        if not idle or not pending:
            return []
        chosen = heapq.nsmallest(self.params.max_orders_per_tick, pending, key=lambda o: (o.urgency, o.id))
        commands: list[Command] = []
        excluded: set[str] = set()
        for _ in range(3):  # re-match orders whose pick went to a driver who declined them
            drivers = [d for d in idle if d.status is DriverStatus.IDLE and d.id not in excluded]
            orders = [o for o in chosen if o.phase is OrderPhase.PENDING]
            if not drivers or not orders:
                break
            result = match(now / 60.0, self._driver_arrays(drivers, now), self._order_arrays(orders),
                           self.travel, self.params.match, self.params.policy)
            for order, urgency in zip(orders, result.order_urgency):
                order.urgency = float(urgency)
            retry = False
            for driver_index, order_indices in result.jobs:
                driver = drivers[driver_index]
                job_orders = [orders[i] for i in order_indices]
                if any(driver.id in o.declined_by for o in job_orders):
                    excluded.add(driver.id)
                    retry = True
                    continue
                commands.append(self._offer(driver, job_orders, now))
            if not retry:
                break
        return commands

    def _offer(self, driver: LiveDriver, orders: list[LiveOrder], now: float) -> SendToDriver:
        offer = Offer(self._next_id("offer", now), driver.id, [o.id for o in orders], now + self.params.offer_ttl_s)
        self.offers[offer.id] = offer
        driver.offer_id = offer.id
        driver.status = apply_driver(driver.status, DriverEvent.OFFER)
        for order in orders:
            order.phase = OrderPhase.OFFERED
        return SendToDriver(driver.id, {
            "type": "offer",
            "offer_id": offer.id,
            "expires_at": offer.expires_at,
            "orders": [self._order_view(o) for o in orders],
        })

    def _driver_arrays(self, drivers: list[LiveDriver], now: float) -> Drivers:
        n = len(drivers)
        return Drivers(
            x=np.array([d.lng for d in drivers], np.float64),
            y=np.array([d.lat for d in drivers], np.float64),
            free_at=np.full(n, now / 60.0),
            capacity=np.array([d.capacity for d in drivers], np.int64),
            shift_end=np.full(n, np.inf),
        )

    @staticmethod
    def _order_arrays(orders: list[LiveOrder]) -> Orders:
        return Orders(
            restaurant_x=np.array([o.restaurant_lng for o in orders], np.float64),
            restaurant_y=np.array([o.restaurant_lat for o in orders], np.float64),
            drop_x=np.array([o.dropoff_lng for o in orders], np.float64),
            drop_y=np.array([o.dropoff_lat for o in orders], np.float64),
            placed_at=np.array([o.placed_at / 60.0 for o in orders], np.float64),
            ready_at=np.array([o.ready_at / 60.0 for o in orders], np.float64),
            restaurant_id=np.array([o.restaurant_id for o in orders], np.int64),
        )

    @staticmethod
    def _order_view(order: LiveOrder) -> dict:
        return {
            "order_id": order.id,
            "restaurant_id": order.restaurant_id,
            "restaurant": {"lat": order.restaurant_lat, "lng": order.restaurant_lng},
            "dropoff": {"lat": order.dropoff_lat, "lng": order.dropoff_lng},
            "ready_at": order.ready_at,
        }

    # Introspection (metrics, dashboard) --------------------------------------

    def load(self) -> dict:
        """Counts an operator watches: drivers by status, pending orders, open offers."""
        by_status: dict[str, int] = {}
        for driver in self.drivers.values():
            by_status[driver.status.value] = by_status.get(driver.status.value, 0) + 1
        pending = sum(o.phase is OrderPhase.PENDING for o in self.orders.values())
        return {"drivers": by_status, "pending_orders": pending, "open_offers": len(self.offers)}
