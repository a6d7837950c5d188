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

Driver statuses move only through ``dispatch.lifecycle.apply_driver`` and an
order's dispatch phase (the diagram) only through ``dispatch.lifecycle.apply_phase``,
whose table says which persisted courier states and driver statuses go with
each phase; order lifecycles are persisted by the actor through
``dispatch.lifecycle.apply``.
Pending orders sit in a heap keyed by their urgency (best slack over the
cell's drivers, in minutes, from the latest tick), so when more orders wait
than one tick may consider, the most urgent go first.

Each tick matches the pending orders against idle drivers and, like the
offline replay, against busy ones too, each free from the end of its current
job (:func:`dispatch.matcher.job_times` from its last fix). Only idle drivers
get offers; an order whose best driver is still busy is *held*: it stays
pending and is decided again at the next tick.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

import wire

from dispatch import kernels
from dispatch.eta import EXPECTED_WINDOW, EtaCalibration, Estimate, expected_orders, forecast, plan_estimate, queue_estimates
from dispatch.eta_quote import CourierAvailability, availability
from dispatch.lifecycle import (
    DISPATCHABLE, FINISHING_COURIER, HOLDING_ORDERS, Courier, DriverEvent, DriverStatus, Event, OrderPhase, PhaseEvent, apply_driver,
    apply_phase, rebuilt_phase,
)
from dispatch.matcher import Drivers, JobTimes, MatchParams, Orders, TravelModel, job_times, match


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
    max_borrows_per_tick: int = 5
    """Most orders one tick asks the neighbouring cells a driver for (each ask is a round trip per neighbour)."""
    departed_fix_grace_s: float = 5.0
    """After a driver leaves (lent to a neighbour, or handed over), fixes still routed here (sent before its front
    door learnt of the move) are ignored this long, so the driver is never registered in two cells."""
    eta_every_s: float = 15.0
    """How often the delivery estimates of the cell's orders are worked out again (and at once when an order
    is placed, assigned or picked up)."""
    eta_time_scale: float = 1.0
    """Real minutes per minute of this cell's clock: 1, except in a bench replaying a day k times faster (k), where
    the estimates' real-minute constants (the live calibration, measured on real days, and the window of orders to
    expect) shrink by k."""
    eta_revise_s: float = 120.0
    """A customer is given a new estimate when its drop-off time moved at least this much (or its basis changed:
    a courier assigned, the food on board): small wobbles would only make the promise look unreliable."""
    idle_retire_s: float = 300.0
    """A cell empty (no online driver, order, offer or job) and quiet this long retires: its actor exits and
    gives its process back; the next fix or order in the cell creates it anew (``dispatch.retirement``)."""
    match: MatchParams = field(default_factory=MatchParams)


#: An estimate reuses the drivers (idle, and busy with their jobs' ends) worked out by a tick this recent.
ESTIMATE_DRIVERS_REUSE_S = 1.0
#: Most recent placements a cell replays as the orders to expect (bounds the forecast's work at extreme rates).
MAX_EXPECTED_ORDERS = 1000

#: Why a pending order is not offered yet, charged per order (``LiveOrder.waited_s``, sent with each offer):
#: ``queued``: not yet considered by a tick (placement, transport, a tick's cap on orders);
#: ``held``: kept for a busy driver who will be free soon (deliberate);
#: ``deferred``: its food is not ready within the commit window (deliberate);
#: ``unmatched``: no driver of the cell could take it;
#: ``offered``: out to a driver who then declined or let the offer expire (shows on re-offers).
WAIT_REASONS = ("queued", "held", "deferred", "unmatched", "offered")

#: Order events applied outside the cell (through the HTTP API) that the order's cell must hear of, and as
#: which change: ``cancelled`` withdraws the order (:meth:`CellCore.withdraw_order`), ``ready`` moves its ready
#: time (:meth:`CellCore.revise_ready`). The other events either change nothing the cell reads or are the
#: cell's own (assignment, a driver's reports).
CELL_NOTICES: dict[Event, str] = {Event.CANCEL: "cancelled", Event.REVISE_READY: "ready", Event.MARK_READY: "ready"}
DELIBERATE_WAITS = frozenset({"held", "deferred"})


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
    held: bool = False
    """The latest tick kept it for a busy driver of this cell who will be free soon."""
    declined_by: set[str] = field(default_factory=set)
    waited_s: dict[str, float] = field(default_factory=dict)
    """Seconds spent pending, by why (:data:`WAIT_REASONS`), up to ``wait_since``."""
    wait_reason: str = "queued"
    wait_since: float | None = None
    """When ``wait_reason`` was last decided (``None``: not yet, the wait runs from ``placed_at``)."""
    estimate: Estimate | None = None
    """The delivery estimate last given to the customer (stored in Postgres), None before the first."""

    def note_wait(self, now: float, reason: str) -> None:
        """Charge the time since the last decision to the reason then in force; ``reason`` holds from ``now``."""
        since = self.placed_at if self.wait_since is None else self.wait_since
        self.waited_s[self.wait_reason] = self.waited_s.get(self.wait_reason, 0.0) + max(0.0, now - since)
        self.wait_reason, self.wait_since = reason, now


@dataclass(frozen=True)
class StoredOrder:
    """What Postgres, the system of record, holds of one order of a cell (see :meth:`CellCore.reconcile`)."""

    order: LiveOrder
    """The order as a cell would rebuild it."""
    courier_status: str
    driver_id: str | None
    job_id: str | None
    cancelled: bool = False


class _Status:
    """``LiveDriver.status``: a plain attribute that also tells the driver's :class:`DriverIndex` of each change.

    It defines ``__set__`` only: assignments come here, while reads find the
    value in the instance's ``__dict__`` at C speed (every tick reads the
    status of every driver of the cell).
    """

    def __set__(self, driver, status: DriverStatus) -> None:
        driver.__dict__["status"] = status
        index = driver.__dict__.get("_index")
        if index is not None:
            index.status_changed(driver)


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

    def __getstate__(self) -> dict:
        """Copies and pickles leave the cell's spatial index behind."""
        state = dict(self.__dict__)
        state.pop("_index", None)
        return state


# Installed after the dataclass is made, which would otherwise replace it by the field's default.
LiveDriver.status = _Status()


class NearbyDriver(NamedTuple):
    driver: LiveDriver
    distance_m: float


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
    picked_up_at: float | None = None
    """When the driver reported the pickup (None: not yet, or not known after a rebuild)."""


# The spatial index of a cell's drivers. ---------------------------------------


class DriverIndex:
    """Where a cell's drivers are and which are available, for nearest-driver queries.

    Positions live in flat numpy arrays with one slot per driver (a departed
    driver's slot is reused), and every slot is threaded into a doubly linked
    list per bucket of a lat/lng grid, which :func:`dispatch.kernels.grid_nearest`
    searches ring by ring. A GPS fix that stays in its bucket costs a few
    array writes; one that crosses into another bucket, an O(1) unlink and
    link. Drivers outside the grid sit in an overflow list that every query
    scans.

    The grid fits the drivers: it covers the 1st to 99th percentile of their
    positions with a margin, in squares sized for about ``per_bucket``
    drivers each (within ``min_bucket_m`` .. ``max_bucket_m``), so a query
    reads a small, cache-friendly array and few empty buckets, in a dense
    downtown cell as in a sparse suburban one. It is laid on the first driver
    (``first_half_span_m`` each way) and laid again, in O(drivers), whenever
    the number of drivers has doubled (or fallen to a quarter) since, or the
    overflow list outgrows an eighth of them. Longitudes are stored as frame
    values within 180 degrees of the grid's centre, so a cell on the
    antimeridian works too.

    :class:`CellCore` keeps it in step: positions and membership through
    ``driver_seen``, ``restore_job`` and ``remove_driver`` (the only places
    that move, add or drop a driver), availability through every assignment
    of ``LiveDriver.status``, wherever it happens.
    """

    def __init__(self, per_bucket: float = 3.0, min_bucket_m: float = 20.0, max_bucket_m: float = 2_000.0,
                 first_half_span_m: float = 4_000.0, max_buckets: int = 1 << 18):
        self.per_bucket = per_bucket
        self.min_bucket_m = min_bucket_m
        self.max_bucket_m = max_bucket_m
        self.first_half_span_m = first_half_span_m
        self.max_buckets = max_buckets
        self._slot_of: dict[str, int] = {}
        self._drivers: list[LiveDriver | None] = []
        self._bucket: list[int] = []  # the list a slot is linked into (-1: none)
        self._prev: list[int] = []
        self._free: list[int] = []
        self.lat = np.zeros(0, np.float64)
        self.lng = np.zeros(0, np.float64)  # frame longitudes
        self.available = np.zeros(0, np.bool_)
        self.next_slot = np.zeros(0, np.int64)
        self.head = np.full(1, -1, np.int64)  # no grid yet: only the overflow list
        self.n_lat = self.n_lng = 0
        self.bucket_m = 0.0
        self.origin_lat = self.origin_lng = self.centre_lng = 0.0
        self.step_lat = self.step_lng = 1.0
        self._overflow_bucket = 0
        self._overflow = 0
        self._rebuild_floor = 64
        self._laid_for = 0  # drivers when the grid was last laid

    def __len__(self) -> int:
        return len(self._slot_of)

    # Maintenance --------------------------------------------------------------

    def place(self, driver: LiveDriver) -> None:
        """Add ``driver``, or move it to its current position (a new object with a known id takes over)."""
        slot = self._slot_of.get(driver.id)
        if slot is None:
            slot = self._take_slot()
            self._slot_of[driver.id] = slot
            grown = len(self._slot_of) >= max(256, 2 * self._laid_for)
        else:
            grown = False
        if self._drivers[slot] is not driver:
            previous = self._drivers[slot]
            if previous is not None:
                previous.__dict__.pop("_index", None)
            self._drivers[slot] = driver
            driver.__dict__["_index"] = self
            self.available[slot] = driver.status in DISPATCHABLE
        lat, lng = driver.lat, driver.lng
        if self.n_lat == 0 and math.isfinite(lat) and math.isfinite(lng):
            self._lay_grid(lat, lng, self.first_half_span_m, self.first_half_span_m)
        lng = self._frame_lng(lng)
        self.lat[slot] = lat
        self.lng[slot] = lng
        bucket = self._bucket_of(lat, lng)
        if bucket != self._bucket[slot]:
            self._unlink(slot)
            self._link(slot, bucket)
            if bucket == self._overflow_bucket and self._overflow > max(self._rebuild_floor, len(self._slot_of) // 8):
                grown = True
        if grown:
            self._refit()

    def discard(self, driver_id: str) -> None:
        """Forget a driver (unknown ids are ignored)."""
        slot = self._slot_of.pop(driver_id, None)
        if slot is None:
            return
        self._unlink(slot)
        driver = self._drivers[slot]
        if driver is not None:
            driver.__dict__.pop("_index", None)
        self._drivers[slot] = None
        self.available[slot] = False
        self._free.append(slot)
        if self._laid_for >= 1024 and 4 * len(self._slot_of) <= self._laid_for:
            self._refit()

    def status_changed(self, driver: LiveDriver) -> None:
        """Re-read whether ``driver`` is available (called by ``LiveDriver.status``)."""
        slot = self._slot_of.get(driver.id)
        if slot is not None and self._drivers[slot] is driver:
            self.available[slot] = driver.status in DISPATCHABLE

    # Queries ------------------------------------------------------------------

    def nearest(self, lat: float, lng: float, radius_m: float, k: int) -> list[NearbyDriver]:
        """The ``k`` nearest available drivers within ``radius_m`` (inclusive), nearest first, ties by lower id."""
        if k <= 0 or not self._slot_of or not (math.isfinite(lat) and math.isfinite(lng)) or not radius_m >= 0:
            return []
        slots, metres = kernels.grid_nearest(
            float(lat), float(self._frame_lng(lng)), float(radius_m), int(k), self.lat, self.lng, self.available,
            self.next_slot, self.head, self.n_lat, self.n_lng, self.origin_lat, self.origin_lng,
            self.step_lat, self.step_lng)
        drivers = self._drivers
        hits = [NearbyDriver(drivers[s], m) for s, m in zip(slots.tolist(), metres.tolist())]
        hits.sort(key=lambda hit: (hit.distance_m, hit.driver.id))  # the kernel returns every tie at the k-th
        del hits[k:]
        return hits

    # Internals ----------------------------------------------------------------

    def _frame_lng(self, lng: float) -> float:
        if lng - self.centre_lng > 180.0:
            return lng - 360.0
        if lng - self.centre_lng < -180.0:
            return lng + 360.0
        return lng

    def _bucket_of(self, lat: float, frame_lng: float) -> int:
        i = (lat - self.origin_lat) / self.step_lat
        j = (frame_lng - self.origin_lng) / self.step_lng
        if 0.0 <= i < self.n_lat and 0.0 <= j < self.n_lng:  # False for NaN
            return int(i) * self.n_lng + int(j)
        return self._overflow_bucket

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        slot = len(self._drivers)
        if slot == self.lat.shape[0]:
            size = max(64, 2 * slot)
            self.lat = np.resize(self.lat, size)
            self.lng = np.resize(self.lng, size)
            self.available = np.resize(self.available, size)
            self.available[slot:] = False
            self.next_slot = np.resize(self.next_slot, size)
        self._drivers.append(None)
        self._bucket.append(-1)
        self._prev.append(-1)
        return slot

    def _link(self, slot: int, bucket: int) -> None:
        first = int(self.head[bucket])
        self.next_slot[slot] = first
        self._prev[slot] = -1
        if first >= 0:
            self._prev[first] = slot
        self.head[bucket] = slot
        self._bucket[slot] = bucket
        if bucket == self._overflow_bucket:
            self._overflow += 1

    def _unlink(self, slot: int) -> None:
        bucket = self._bucket[slot]
        if bucket < 0:
            return
        prev, following = self._prev[slot], int(self.next_slot[slot])
        if prev >= 0:
            self.next_slot[prev] = following
        else:
            self.head[bucket] = following
        if following >= 0:
            self._prev[following] = prev
        self._bucket[slot] = -1
        if bucket == self._overflow_bucket:
            self._overflow -= 1

    def _refit(self) -> None:
        """Lay the grid again over where the drivers are: the 1st to 99th percentile around the median, plus a tenth."""
        live = np.fromiter(self._slot_of.values(), np.int64, len(self._slot_of))
        lat, lng = self.lat[live], self.lng[live]
        finite = np.isfinite(lat) & np.isfinite(lng)
        if not finite.any():
            self._laid_for = len(self._slot_of)
            return
        lo_lat, mid_lat, hi_lat = np.quantile(lat[finite], [0.01, 0.5, 0.99])
        lo_lng, mid_lng, hi_lng = np.quantile(lng[finite], [0.01, 0.5, 0.99])
        metres_lng = kernels.METRES_PER_DEGREE * max(math.cos(math.radians(mid_lat)), 1e-3)
        half_lat = max(mid_lat - lo_lat, hi_lat - mid_lat) * kernels.METRES_PER_DEGREE * 1.1 + self.min_bucket_m
        half_lng = max(mid_lng - lo_lng, hi_lng - mid_lng) * metres_lng * 1.1 + self.min_bucket_m
        self._lay_grid(float(mid_lat), float(((mid_lng + 180.0) % 360.0) - 180.0), half_lat, half_lng)

    def _lay_grid(self, centre_lat: float, centre_lng: float, half_lat_m: float, half_lng_m: float) -> None:
        """Lay a new grid around a centre, its buckets sized for the drivers there are, and relink them all."""
        area = 4.0 * half_lat_m * half_lng_m
        bucket_m = math.sqrt(area * self.per_bucket / max(len(self._slot_of), 1))
        bucket_m = min(max(bucket_m, self.min_bucket_m, math.sqrt(area / self.max_buckets)), self.max_bucket_m)
        n_lat = max(1, math.ceil(2 * half_lat_m / bucket_m))
        n_lng = max(1, math.ceil(2 * half_lng_m / bucket_m))
        if n_lat * n_lng > self.max_buckets:  # max_bucket_m yields to max_buckets
            bucket_m *= math.sqrt(n_lat * n_lng / self.max_buckets)
            n_lat = max(1, math.ceil(2 * half_lat_m / bucket_m))
            n_lng = max(1, math.ceil(2 * half_lng_m / bucket_m))
        self.n_lat, self.n_lng = n_lat, n_lng
        self.bucket_m = bucket_m
        self.step_lat = bucket_m / kernels.METRES_PER_DEGREE
        self.step_lng = bucket_m / (kernels.METRES_PER_DEGREE * max(math.cos(math.radians(centre_lat)), 1e-3))
        self.origin_lat = centre_lat - 0.5 * n_lat * self.step_lat
        self.origin_lng = centre_lng - 0.5 * n_lng * self.step_lng
        self.centre_lng = self.origin_lng + 0.5 * n_lng * self.step_lng  # the kernel's own reckoning of it
        self._overflow_bucket = n_lat * n_lng
        self.head = np.full(n_lat * n_lng + 1, -1, np.int64)
        live = np.fromiter(self._slot_of.values(), np.int64, len(self._slot_of))
        lng = self.lng[live]
        lng = lng - 360.0 * np.round((lng - self.centre_lng) / 360.0)
        self.lng[live] = lng
        i = (self.lat[live] - self.origin_lat) / self.step_lat
        j = (lng - self.origin_lng) / self.step_lng
        inside = (i >= 0) & (i < n_lat) & (j >= 0) & (j < n_lng)
        bucket = np.where(inside, np.where(inside, i, 0).astype(np.int64) * n_lng
                          + np.where(inside, j, 0).astype(np.int64), self._overflow_bucket)
        order = np.lexsort((live, bucket))
        slots, buckets = live[order], bucket[order]
        same_as_next = np.zeros(len(slots), np.bool_)
        same_as_next[:-1] = buckets[1:] == buckets[:-1]
        same_as_prev = np.zeros(len(slots), np.bool_)
        same_as_prev[1:] = same_as_next[:-1]
        self.next_slot[slots] = np.where(same_as_next, np.roll(slots, -1), -1)
        prev = np.where(same_as_prev, np.roll(slots, 1), -1)
        self.head[buckets[~same_as_prev]] = slots[~same_as_prev]
        for slot, slot_bucket, slot_prev in zip(slots.tolist(), buckets.tolist(), prev.tolist()):
            self._bucket[slot] = slot_bucket
            self._prev[slot] = slot_prev
        self._overflow = int(np.count_nonzero(buckets == self._overflow_bucket))
        self._rebuild_floor = max(64, 2 * self._overflow)
        self._laid_for = len(self._slot_of)


#: The reason of the ``job_withdrawn`` a driver gets when it went silent for the heartbeat TTL.
DRIVER_LOST = "driver_lost"


# Commands: what the actor must do. --------------------------------------------


@dataclass(frozen=True)
class SendToDriver:
    driver_id: str
    message: wire.ServerFrame


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


@dataclass(frozen=True)
class GiveEstimate:
    """Record a delivery estimate for an order (an ``estimate`` event): once stored, it is given to the customer.
    The actor reports which were stored (:meth:`CellCore.estimates_given`)."""

    order_id: int
    estimate: Estimate


Command = SendToDriver | PersistAssignment | PersistOrderEvent | GiveEstimate


class CellError(Exception):
    """An input the cell refuses (answered to the driver as an error frame)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class CellCore:
    """The drivers, orders, offers and jobs of one cell; see the module docstring."""

    def __init__(self, cell_id: str, params: CellParams | None = None, calibration: EtaCalibration | None = None):
        self.cell_id = cell_id
        self.params = params or CellParams()
        self.calibration = calibration or EtaCalibration()
        #: Orders placed here lately, newest last: the orders to expect (``dispatch.eta.expected_orders``).
        self.recent: deque[LiveOrder] = deque(maxlen=MAX_EXPECTED_ORDERS)
        self._next_estimates_at = -math.inf
        #: Orders whose estimate is worked out again at the next tick (their ready time moved).
        self._estimates_due: set[int] = set()
        self._matchable: tuple[float, list[LiveDriver], list] | None = None
        self.travel = TravelModel.great_circle(self.params.speed_kmh)
        self.drivers: dict[str, LiveDriver] = {}
        self.orders: dict[int, LiveOrder] = {}
        self.offers: dict[str, Offer] = {}
        self.jobs: dict[str, Job] = {}
        #: Jobs rebuilt from Postgres, not yet started, whose driver has not heard of them from this cell.
        self.unannounced: set[str] = set()
        self._serial = 0
        self._index = DriverIndex()
        #: Driver id -> until when its fixes are ignored (it left this cell; see :meth:`depart`).
        self.departed_until: dict[str, float] = {}
        #: Order id -> when a neighbouring cell was last asked for a driver for it (see :meth:`orders_to_borrow_for`).
        self.borrow_asked: dict[int, float] = {}

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
        self._index.place(driver)

    def driver_offline(self, driver_id: str, now: float) -> None:
        """The driver stops taking work (only while idle)."""
        driver = self._driver(driver_id)
        driver.status = apply_driver(driver.status, DriverEvent.GO_OFFLINE)

    def remove_driver(self, driver_id: str) -> LiveDriver | None:
        """Forget an idle or offline driver (it crossed into another cell)."""
        driver = self.drivers.get(driver_id)
        if driver is None or driver.status not in (DriverStatus.IDLE, DriverStatus.OFFLINE):
            return None
        self._index.discard(driver_id)
        return self.drivers.pop(driver_id)

    def depart(self, driver_id: str, now: float) -> LiveDriver | None:
        """The driver leaves for another cell (handed over, or lent): forgotten if idle or offline
        (:meth:`remove_driver`), and its fixes still routed here are ignored for ``departed_fix_grace_s``."""
        driver = self.remove_driver(driver_id)
        if driver is not None:
            for gone in [d for d, until in self.departed_until.items() if until < now]:
                del self.departed_until[gone]
            self.departed_until[driver_id] = now + self.params.departed_fix_grace_s
        return driver

    def lend_nearest_idle(self, lat: float, lng: float, radius_m: float, now: float) -> LiveDriver | None:
        """The idle driver nearest to a point within ``radius_m``, departed to a neighbouring cell that borrows it."""
        driver = self.nearest_idle(lat, lng, radius_m)
        return None if driver is None else self.depart(driver.id, now)

    def accepts_fix(self, driver_id: str, now: float) -> bool:
        """False for a fix of a driver that departed within the grace (sent before its front door learnt of it)."""
        return self.departed_until.get(driver_id, -math.inf) <= now

    def orders_to_borrow_for(self, now: float) -> list[LiveOrder]:
        """Orders to ask the neighbouring cells an idle driver for, now; each is marked asked at ``now``.

        Those no local driver took for ``borrow_after_s`` (:meth:`unoffered_orders`, oldest first), not
        asked within the last ``borrow_after_s``, at most ``max_borrows_per_tick`` of them.
        """
        for order_id in [i for i in self.borrow_asked if i not in self.orders]:
            del self.borrow_asked[order_id]
        after_s = self.params.borrow_after_s
        chosen = [order for order in self.unoffered_orders(now, after_s)[: self.params.max_borrows_per_tick]
                  if now - self.borrow_asked.get(order.id, -math.inf) >= after_s]
        for order in chosen:
            self.borrow_asked[order.id] = now
        return chosen

    def nearest_available(self, lat: float, lng: float, radius_m: float, k: int) -> list[NearbyDriver]:
        """The ``k`` nearest available (idle) drivers within ``radius_m`` of a point, nearest first.

        Distances are great-circle metres, the radius is inclusive, and equal
        distances break by lower driver id, so the answer is deterministic.
        """
        return self._index.nearest(lat, lng, radius_m, k)

    def nearest_idle(self, lat: float, lng: float, radius_m: float) -> LiveDriver | None:
        """The idle driver nearest to a point within ``radius_m``, if any (ties: lower id)."""
        nearest = self.nearest_available(lat, lng, radius_m, 1)
        return nearest[0].driver if nearest else None

    def unoffered_orders(self, now: float, older_than_s: float) -> list[LiveOrder]:
        """Pending orders no driver of this cell has taken for ``older_than_s`` seconds, oldest first
        (not those kept for a local driver about to be free)."""
        waiting = [o for o in self.orders.values()
                   if o.phase is OrderPhase.PENDING and not o.held and now - o.placed_at >= older_than_s]
        return sorted(waiting, key=lambda o: (o.placed_at, o.id))

    def _driver(self, driver_id: str) -> LiveDriver:
        driver = self.drivers.get(driver_id)
        if driver is None:
            raise CellError("unknown_driver", "this cell does not know the driver; send a GPS fix first")
        return driver

    # Orders -----------------------------------------------------------------

    def add_order(self, order: LiveOrder) -> None:
        """A new order to dispatch (idempotent: a known order is left as it is)."""
        if order.id not in self.orders:
            self.orders[order.id] = order
            self.recent.append(order)

    def revise_ready(self, order_id: int, ready_at: float) -> None:
        """The kitchen's new ready time; the order's estimate is worked out again at the next tick."""
        order = self.orders.get(order_id)
        if order is not None:
            order.ready_at = ready_at
            self._estimates_due.add(order_id)

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
                commands.append(SendToDriver(driver.id, wire.Cancelled(order_id, reason)))
                if not job.order_ids:
                    del self.jobs[job.id]
                    driver.job_id = None
                    driver.status = apply_driver(driver.status, DriverEvent.WITHDRAW)
        return commands

    def restore_job(self, job_id: str, driver_id: str, orders: list[LiveOrder], picked_up: bool,
                    at_restaurant: bool, now: float) -> None:
        """Rebuild a job persisted before a restart; the driver re-appears with its next GPS fix."""
        for order in orders:
            order.phase = rebuilt_phase(Courier.PICKED_UP if picked_up else Courier.ASSIGNED)
            order.driver_id = driver_id
            self.orders[order.id] = order
        self.jobs[job_id] = Job(job_id, driver_id, [o.id for o in orders])
        first = orders[0]
        status = (DriverStatus.DELIVERING if picked_up
                  else DriverStatus.AT_RESTAURANT if at_restaurant else DriverStatus.EN_ROUTE)
        self.drivers[driver_id] = LiveDriver(driver_id, first.restaurant_lat, first.restaurant_lng, now,
                                             status=status, job_id=job_id)
        self._index.place(self.drivers[driver_id])
        if status is DriverStatus.EN_ROUTE:
            self.unannounced.add(job_id)

    def announce_restored(self, driver_id: str) -> list[Command]:
        """The ``assigned`` of a job rebuilt from Postgres that its driver has not started, once, when the driver
        shows up again: the cell that committed it may have died before the message left (a node lost), and a
        driver never told would leave its orders stranded. Apps ignore an ``assigned`` of a job they hold."""
        driver = self.drivers.get(driver_id)
        job = self.jobs.get(driver.job_id) if driver is not None and driver.job_id is not None else None
        if job is None or job.id not in self.unannounced:
            return []
        self.unannounced.discard(job.id)
        if driver.status is not DriverStatus.EN_ROUTE:
            return []
        orders = [self._order_view(self.orders[i]) for i in job.order_ids if i in self.orders]
        return [SendToDriver(driver_id, wire.Assigned(job.id, orders))]

    # Repair: memory against Postgres -----------------------------------------

    def reconcile(self, stored: list[StoredOrder], unsettled: set[int], now: float) -> list[Command]:
        """Make the cell agree with Postgres about the ``stored`` orders; return what to send and persist.

        ``stored`` holds every live order of the cell in Postgres and any other
        order the cell holds. Orders in ``unsettled`` (being written, or changed
        since ``stored`` was read) are left alone. The repairs:

        * finished in Postgres (cancelled, delivered) but held here: dropped, its driver told;
        * waiting for a driver in Postgres but unknown here: dispatched;
        * waiting in Postgres but "assigning" here with nothing writing it: the assignment
          failed: rolled back (orders pending, the driver idle and told ``job_withdrawn``);
        * waiting in Postgres but assigned here: taken from its driver (told) and dispatched again;
        * assigned in Postgres to the job that holds it here, still "assigning": confirmed (driver told);
        * assigned in Postgres to a job the cell does not hold for it (a commit that looked failed):
          released in Postgres (``unassign``; no driver was sent) and dispatched again. After
          pick-up it is never released: an unknown job is adopted as it stands.
        """
        commands: list[Command] = []
        for row in stored:
            if row.order.id not in unsettled:
                commands += self._repair(row, now)
        return commands

    def _repair(self, row: StoredOrder, now: float) -> list[Command]:
        order_id = row.order.id
        held = self.orders.get(order_id)
        job = next((j for j in self.jobs.values() if order_id in j.order_ids), None) if held else None
        if row.cancelled or row.courier_status == FINISHING_COURIER:
            if held is None:
                return []
            if held.phase is OrderPhase.PICKED_UP:
                try:
                    self.delivered(held.driver_id, order_id)  # Postgres has the delivery already
                except CellError:
                    self.orders.pop(order_id, None)
                return []
            return self.withdraw_order(order_id, "cancelled" if row.cancelled else "delivered")
        if row.job_id is None:
            if held is None:
                self.add_order(row.order)
            elif held.phase is OrderPhase.ASSIGNING and job is not None:
                return self.assignment_persisted(job.id, False, "the assignment could not be recorded")
            elif held.phase in (OrderPhase.ASSIGNED, OrderPhase.PICKED_UP):
                commands = self.withdraw_order(order_id, "reassigned")
                self.add_order(row.order)
                return commands
            return []
        if job is not None and job.id == row.job_id:
            return self.assignment_persisted(job.id, True) if held.phase is OrderPhase.ASSIGNING else []
        if row.courier_status == Courier.PICKED_UP:
            if held is None and row.job_id not in self.jobs and row.driver_id not in self.drivers:
                self.restore_job(row.job_id, row.driver_id, [row.order], picked_up=True, at_restaurant=False, now=now)
            return []
        commands = []
        if held is not None and held.phase is OrderPhase.ASSIGNING and job is not None:
            commands += self.assignment_persisted(job.id, False, "the assignment could not be recorded")
        elif held is not None and held.phase in (OrderPhase.ASSIGNED, OrderPhase.PICKED_UP):
            commands += self.withdraw_order(order_id, "reassigned")
        self.add_order(row.order)
        commands.append(PersistOrderEvent(order_id, "unassign", row.driver_id, reason="assignment not confirmed"))
        return commands

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
            order.phase, order.driver_id = apply_phase(order.phase, PhaseEvent.ACCEPT), driver_id
        return [PersistAssignment(job.id, driver_id, tuple(job.order_ids))]

    def assignment_persisted(self, job_id: str, ok: bool, reason: str = "") -> list[Command]:
        """Postgres accepted (or refused) the assignment of a job."""
        job = self.jobs.get(job_id)
        if job is None:
            return []
        driver = self.drivers.get(job.driver_id)
        if ok:
            for order_id in job.order_ids:
                order = self.orders[order_id]
                order.phase = apply_phase(order.phase, PhaseEvent.CONFIRM)
            self._next_estimates_at = -math.inf  # the customers hear of their courier's plan at the next tick
            orders = [self._order_view(self.orders[i]) for i in job.order_ids]
            return [SendToDriver(job.driver_id, wire.Assigned(job.id, orders))]
        del self.jobs[job_id]
        for order_id in job.order_ids:
            order = self.orders.get(order_id)
            if order is not None:
                order.phase, order.driver_id = apply_phase(order.phase, PhaseEvent.RELEASE), None
        commands: list[Command] = []
        if driver is not None and driver.job_id == job_id:
            driver.job_id = None
            driver.status = apply_driver(driver.status, DriverEvent.WITHDRAW)
            commands.append(SendToDriver(driver.id, wire.JobWithdrawn(job_id, reason)))
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
                order.phase = apply_phase(order.phase, PhaseEvent.OFFER_CLOSED)
                order.declined_by.add(offer.driver_id)
        driver = self.drivers.get(offer.driver_id)
        if driver is not None and driver.offer_id == offer.id:
            driver.offer_id = None
            driver.status = apply_driver(driver.status, event)
        if notify is not None or event is DriverEvent.OFFER_EXPIRED:
            reason = notify or "expired"
            return [SendToDriver(offer.driver_id, wire.OfferWithdrawn(offer.id, reason))]
        return []

    # Jobs -------------------------------------------------------------------

    def check_job_event(self, driver_id: str, job_id: str, event: DriverEvent) -> list[PersistOrderEvent]:
        """What :meth:`job_event` would persist, changing nothing (raises ``CellError`` as it would).

        The actor persists these first and applies the report only once
        Postgres has it, so a report that cannot be recorded changes nothing.
        """
        driver = self._driver(driver_id)
        job = self.jobs.get(job_id)
        if job is None or job.driver_id != driver_id or driver.job_id != job_id:
            raise CellError("unknown_job", "no such job is assigned to this driver")
        if any(self.orders[i].phase is OrderPhase.ASSIGNING for i in job.order_ids):
            raise CellError("not_yet_assigned", "the assignment is still being confirmed")
        apply_driver(driver.status, event)
        order_event = {DriverEvent.ARRIVE: "arrive", DriverEvent.PICK_UP: "pick_up"}[event]
        return [PersistOrderEvent(i, order_event, driver_id) for i in job.order_ids]

    def job_event(self, driver_id: str, job_id: str, event: DriverEvent, now: float | None = None) -> list[Command]:
        """The driver reports ``ARRIVE`` or ``PICK_UP`` for its job (at ``now``, when known)."""
        commands = self.check_job_event(driver_id, job_id, event)
        driver = self.drivers[driver_id]
        driver.status = apply_driver(driver.status, event)
        if event is DriverEvent.PICK_UP:
            self.jobs[job_id].picked_up_at = now
            for order_id in self.jobs[job_id].order_ids:
                order = self.orders[order_id]
                order.phase = apply_phase(order.phase, PhaseEvent.PICK_UP)
            self._next_estimates_at = -math.inf
        return commands

    def check_delivered(self, driver_id: str, order_id: int) -> list[PersistOrderEvent]:
        """What :meth:`delivered` would persist, changing nothing (raises ``CellError`` as it would)."""
        driver = self._driver(driver_id)
        job = self.jobs.get(driver.job_id) if driver.job_id else None
        if job is None or order_id not in job.order_ids or order_id in job.delivered:
            raise CellError("unknown_order", "this order is not on the driver's current job")
        if driver.status is not DriverStatus.DELIVERING:
            raise CellError("not_picked_up", "an order is delivered only after pick-up")
        return [PersistOrderEvent(order_id, "deliver", driver_id)]

    def delivered(self, driver_id: str, order_id: int) -> list[Command]:
        commands = self.check_delivered(driver_id, order_id)
        driver = self.drivers[driver_id]
        job = self.jobs[driver.job_id]
        job.delivered.add(order_id)
        last = len(job.delivered) == len(job.order_ids)
        driver.status = apply_driver(driver.status, DriverEvent.DELIVER_LAST if last else DriverEvent.DELIVER_ONE)
        self.orders.pop(order_id, None)
        if last:
            del self.jobs[job.id]
            driver.job_id = None
        return commands

    # The tick ---------------------------------------------------------------

    def tick(self, now: float) -> list[Command]:
        """Expire offers, lose silent drivers, and offer the most urgent pending orders."""
        commands: list[Command] = []
        for offer in [o for o in self.offers.values() if now > o.expires_at]:
            commands += self._end_offer(offer, DriverEvent.OFFER_EXPIRED)
        for driver in [d for d in self.drivers.values() if now - d.last_seen > self.params.heartbeat_ttl_s]:
            commands += self._lose(driver)
        commands += self._match(now)
        if now >= self._next_estimates_at:
            commands += self.estimates(now)
        elif self._estimates_due:
            commands += self.estimates(now, only=self._estimates_due)
        return commands

    def _lose(self, driver: LiveDriver) -> list[Command]:
        """A silent driver goes offline; orders it had not picked up are re-dispatched, and it is told
        (``job_withdrawn``, reason ``driver_lost``). It is not barred from them: its next fix makes it
        available, and the matcher may give them back to it.

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
                order.phase, order.driver_id = apply_phase(order.phase, PhaseEvent.RELEASE), None
                commands.append(PersistOrderEvent(order_id, "unassign", driver.id, reason="driver lost"))
            commands.append(SendToDriver(driver.id, wire.JobWithdrawn(job.id, DRIVER_LOST)))
            driver.job_id = None
        driver.status = apply_driver(driver.status, DriverEvent.LOST)
        return commands

    def _match(self, now: float) -> list[Command]:
        """Offer pending orders to idle drivers. Busy drivers are matched too, from when and where
        their job ends, as the offline replay does: an order best kept for one stays pending (held)."""
        pending = [o for o in self.orders.values() if o.phase is OrderPhase.PENDING]
        if not pending:
            return []
        idle, busy = self._matchable_drivers(now)
        if not idle and not busy:
            for order in pending:
                order.note_wait(now, "unmatched")
            return []
        chosen = heapq.nsmallest(self.params.max_orders_per_tick, pending, key=lambda o: (o.urgency, o.id))
        commands: list[Command] = []
        excluded: set[str] = set()
        for _ in range(3):  # re-match orders whose pick went to a driver who declined them
            free = [d for d in idle if d.status is DriverStatus.IDLE and d.id not in excluded]
            orders = [o for o in chosen if o.phase is OrderPhase.PENDING]
            if not orders:
                break
            result = match(now / 60.0, self._driver_arrays(free, busy, now), self._order_arrays(orders),
                           self.travel, self.params.match, self.params.policy)
            for order, urgency, held in zip(orders, result.order_urgency, result.order_held):
                order.urgency, order.held = float(urgency), bool(held)
            if not free:
                break
            retry = False
            for driver_index, order_indices in result.jobs:
                driver = free[driver_index]  # committed jobs only go to drivers free now: the idle ones
                job_orders = [orders[i] for i in order_indices]
                if any(driver.id in o.declined_by for o in job_orders):
                    excluded.add(driver.id)
                    retry = True
                    continue
                commands.append(self._offer(driver, job_orders, now))
            if not retry:
                break
        commit_window = self.params.match.commit_window
        for order in chosen:
            if order.phase is OrderPhase.PENDING:
                order.note_wait(now, "held" if order.held else
                                "deferred" if commit_window < order.urgency < math.inf else "unmatched")
        return commands

    def _recent_matchable_drivers(self, now: float) -> tuple[
            list[LiveDriver], list[tuple[LiveDriver, tuple[float, float, float]]]]:
        """:meth:`_matchable_drivers` as a tick at most :data:`ESTIMATE_DRIVERS_REUSE_S` ago worked them out (an
        estimate need not pay for every busy driver's plan again), else afresh."""
        if self._matchable is not None and 0.0 <= now - self._matchable[0] <= ESTIMATE_DRIVERS_REUSE_S:
            return self._matchable[1], self._matchable[2]
        return self._matchable_drivers(now)

    def _matchable_drivers(self, now: float) -> tuple[
            list[LiveDriver], list[tuple[LiveDriver, tuple[float, float, float]]]]:
        """Idle drivers, and busy ones with when and where (:meth:`_job_end`) they will be free; kept for
        :meth:`_recent_matchable_drivers`."""
        idle_status, ttl_s = DriverStatus.IDLE, self.params.heartbeat_ttl_s
        idle = [d for d in self.drivers.values() if d.status is idle_status]
        # A silent driver keeps its food (see _lose) but no order waits for it. Only drivers with a
        # job can be busy (_job_end needs one): testing job_id first skips the rest cheaply.
        busy = [(d, end) for d in self.drivers.values()
                if d.job_id is not None and d.status in HOLDING_ORDERS and now - d.last_seen <= ttl_s
                and (end := self._job_end(d, now)) is not None]
        self._matchable = (now, idle, busy)
        return idle, busy

    def _job_end(self, driver: LiveDriver, now: float) -> tuple[float, float, float] | None:
        """When (minutes) and where (lng, lat) a busy driver will be free (:meth:`_rest_of_job`)."""
        rest = self._rest_of_job(driver, now)
        if rest is None:
            return None
        times = rest[2]
        # A job running late still ends after now: the matcher commits only to drivers free now.
        return max(times.free_at, math.nextafter(now / 60.0, math.inf)), times.free_x, times.free_y

    def _rest_of_job(self, driver: LiveDriver, now: float) -> tuple[Job, list[LiveOrder], JobTimes] | None:
        """The driver's job, its undelivered orders and the plan for them from its last fix, by the matcher's travel
        model (:func:`dispatch.matcher.job_times`); None without a job. With the food on board the drive starts once
        the pickup's exit time (``pickup_exit`` after the reported pickup) has passed."""
        job = self.jobs.get(driver.job_id) if driver.job_id else None
        orders = [self.orders[i] for i in job.order_ids if i not in job.delivered and i in self.orders] if job else []
        if not orders:
            return None
        first, start = orders[0], now / 60.0
        picked_up = driver.status is DriverStatus.DELIVERING
        if picked_up and job.picked_up_at is not None:
            start = max(start, job.picked_up_at / 60.0 + self.params.match.pickup_exit)
        times = job_times(start, driver.lng, driver.lat, (first.restaurant_lng, first.restaurant_lat),
                          max(o.ready_at for o in orders) / 60.0, [(o.dropoff_lng, o.dropoff_lat) for o in orders],
                          self.travel, self.params.match, picked_up=picked_up)
        return job, orders, times

    def _offer(self, driver: LiveDriver, orders: list[LiveOrder], now: float) -> SendToDriver:
        offer = Offer(self._next_id("offer", now), driver.id, [o.id for o in orders], now + self.params.offer_ttl_s)
        self.offers[offer.id] = offer
        driver.offer_id = offer.id
        driver.status = apply_driver(driver.status, DriverEvent.OFFER)
        for order in orders:
            order.phase = apply_phase(order.phase, PhaseEvent.OFFER)
            order.note_wait(now, "offered")
        # When this driver would reach the restaurant, for the driver to weigh and the kitchen to time the food.
        arrival = now + 60.0 * self.travel.minutes(driver.lng, driver.lat, orders[0].restaurant_lng,
                                                   orders[0].restaurant_lat)
        return SendToDriver(driver.id, wire.OfferFrame(
            offer.id, offer.expires_at,
            [{**self._order_view(o), "waited_s": {k: round(v, 3) for k, v in o.waited_s.items()},
              "courier_arrival_at": round(arrival, 1)} for o in orders],
        ))

    # Delivery estimates -------------------------------------------------------

    def estimates(self, now: float, only: int | set[int] | None = None) -> list[GiveEstimate]:
        """Work out every live order's delivery estimate (only the order or orders ``only``, when given) and give
        those that moved (:meth:`dispatch.eta.Estimate.moved`) or were never given.

        Orders no courier has yet: :func:`dispatch.eta.forecast` of the cell's queue (the orders placed in the
        last :data:`~dispatch.eta.EXPECTED_WINDOW` minutes replayed as the orders to expect), calibrated. Orders
        with a courier: its plan from its last fix (:func:`dispatch.matcher.job_times`). Orders out to a driver
        or being assigned keep the estimate they have until that settles."""
        wanted = None if only is None else {only} if isinstance(only, int) else set(only)
        if wanted is None:  # one order's promise does not put off everyone else's revision
            self._next_estimates_at = now + self.params.eta_every_s
            self._estimates_due.clear()
        else:
            self._estimates_due -= wanted
        fresh: dict[int, Estimate] = {}
        if wanted is None or any(i in self.orders and self.orders[i].phase is OrderPhase.PENDING for i in wanted):
            fresh.update(self._queue_estimates(now))
        for job in self.jobs.values():
            if wanted is None or not wanted.isdisjoint(job.order_ids):
                fresh.update(self._plan_estimates(now, job))
        given = []
        for order_id, estimate in fresh.items():
            order = self.orders[order_id]
            if (wanted is None or order_id in wanted) and (
                    order.estimate is None or estimate.moved(order.estimate, self.params.eta_revise_s)):
                given.append(GiveEstimate(order_id, estimate))
        return given

    def estimates_given(self, given: list[GiveEstimate]) -> None:
        """These estimates were stored: they are what the customers now hold."""
        for command in given:
            order = self.orders.get(command.order_id)
            if order is not None:
                order.estimate = command.estimate

    def _queue(self, now: float) -> tuple[Drivers, list[LiveOrder], Orders]:
        """The cell's queue as the forecasts (estimates, quotes at search) see it: the drivers, free now (idle, or
        holding an offer) or from when and where their job ends; the orders not in a job yet (pending or offered);
        and the orders to expect (those placed in the last :data:`~dispatch.eta.EXPECTED_WINDOW` real minutes,
        again: :func:`dispatch.eta.expected_orders`)."""
        window = EXPECTED_WINDOW / self.params.eta_time_scale  # minutes of this cell's clock
        while self.recent and self.recent[0].placed_at <= now - window * 60.0:
            self.recent.popleft()
        _, busy = self._recent_matchable_drivers(now)
        free = [d for d in self.drivers.values() if d.status in (DriverStatus.IDLE, DriverStatus.OFFERED)]
        waiting = [o for o in self.orders.values() if o.phase in (OrderPhase.PENDING, OrderPhase.OFFERED)]
        expected = expected_orders(self._order_arrays(list(self.recent)), now / 60.0, window)
        return self._driver_arrays(free, busy, now), waiting, expected

    def _queue_estimates(self, now: float) -> dict[int, Estimate]:
        """Calibrated forecasts of the pending orders (an offered one keeps its estimate until it settles)."""
        drivers, waiting, expected = self._queue(now)
        if not any(o.phase is OrderPhase.PENDING for o in waiting):
            return {}
        raw = forecast(now / 60.0, drivers, self._order_arrays(waiting), self.travel, self.params.match, expected)
        estimates = queue_estimates(now, raw, self.calibration, self.params.match.dropoff_service / 2,
                                    self.params.eta_time_scale)
        return {o.id: e for o, e in zip(waiting, estimates) if o.phase is OrderPhase.PENDING}

    def _plan_estimates(self, now: float, job: Job) -> dict[int, Estimate]:
        """The estimates of a job's undelivered orders from its driver's plan (none while it is being assigned)."""
        driver = self.drivers.get(job.driver_id)
        rest = self._rest_of_job(driver, now) if driver is not None else None
        if rest is None or rest[0] is not job or any(o.phase not in (OrderPhase.ASSIGNED, OrderPhase.PICKED_UP)
                                                     for o in rest[1]):
            return {}
        _, orders, times = rest
        first = orders[0]
        picked_up = driver.status is DriverStatus.DELIVERING
        arrival = None if picked_up else now / 60.0 + self.travel.minutes(driver.lng, driver.lat, first.restaurant_lng,
                                                                          first.restaurant_lat)
        pickup = None if picked_up else times.pickup
        handover = self.params.match.dropoff_service / 2
        return {o.id: plan_estimate(now, door + handover, pickup, arrival, self.params.eta_time_scale)
                for o, door in zip(orders, times.arrivals)}

    @staticmethod
    def _driver_arrays(idle: list[LiveDriver], busy: list[tuple[LiveDriver, tuple[float, float, float]]],
                       now: float) -> Drivers:
        """Idle drivers (first, free now where they are), then busy ones (free when and where their job ends)."""
        ends = [end for _, end in busy]
        return Drivers(
            x=np.array([d.lng for d in idle] + [x for _, x, _ in ends], np.float64),
            y=np.array([d.lat for d in idle] + [y for _, _, y in ends], np.float64),
            free_at=np.array([now / 60.0] * len(idle) + [t for t, _, _ in ends], np.float64),
            capacity=np.array([d.capacity for d in idle] + [d.capacity for d, _ in busy], np.int64),
            shift_end=np.full(len(idle) + len(busy), np.inf),
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

    def driver_view(self, driver_id: str) -> dict | None:
        """The driver's live state for its ``welcome``: ``{state, offer, job}`` (None: this cell does not hold it).

        ``offer`` is ``{offer_id, expires_at, orders}``, ``job`` ``{job_id, orders, delivered}`` (its undelivered
        orders, and the ids of those delivered), each None when the driver holds none; orders are described as
        in ``offer`` and ``assigned`` frames.
        """
        driver = self.drivers.get(driver_id)
        if driver is None:
            return None
        offer = self.offers.get(driver.offer_id) if driver.offer_id else None
        job = self.jobs.get(driver.job_id) if driver.job_id else None

        def views(order_ids: list[int]) -> list[dict]:  # a delivered order has left the cell
            return [self._order_view(self.orders[i]) for i in order_ids if i in self.orders]

        return {
            "state": driver.status.value,
            "offer": None if offer is None else {
                "offer_id": offer.id, "expires_at": offer.expires_at, "orders": views(offer.order_ids)},
            "job": None if job is None else {
                "job_id": job.id, "orders": views(job.order_ids), "delivered": sorted(job.delivered)},
        }

    # Introspection (metrics, dashboard) --------------------------------------

    def is_empty(self) -> bool:
        """Nothing here would be lost if the cell went away: no online driver, no order, no offer, no job.

        Offline drivers do not count: they come back with their next fix, wherever it lands.
        """
        return (not self.orders and not self.offers and not self.jobs
                and all(d.status is DriverStatus.OFFLINE for d in self.drivers.values()))

    def load(self) -> dict:
        """Counts an operator watches: drivers by status, pending orders, open offers."""
        by_status = Counter(driver.status for driver in self.drivers.values())  # the ops map asks every second
        pending = sum(o.phase is OrderPhase.PENDING for o in self.orders.values())
        return {"drivers": {status.value: count for status, count in by_status.items()}, "pending_orders": pending, "open_offers": len(self.offers)}

    # Delivery-time quotes at search (issue 14) -------------------------------

    def courier_availability(self, now: float) -> CourierAvailability:
        """When and where each courier of the cell is free once its queue (:meth:`_queue`) is served
        (:func:`dispatch.eta_quote.availability`, in minutes)."""
        drivers, waiting, expected = self._queue(now)
        return availability(now / 60.0, drivers, self._order_arrays(waiting), self.travel, self.params.match, expected)
