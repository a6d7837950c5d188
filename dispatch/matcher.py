"""The dispatch matcher: which driver takes which pending orders, now.

Plain numpy arrays in, plain numpy arrays out; no I/O, no clock (``now`` is an
argument), deterministic. The live cell actors and the MDRP simulator call the
same function::

    from dispatch.matcher import Drivers, Orders, MatchParams, TravelModel, match

    drivers = Drivers(x=lng, y=lat, free_at=free_from_minutes, capacity=caps, shift_end=ends)
    orders = Orders(restaurant_x=..., restaurant_y=..., drop_x=..., drop_y=...,
                    placed_at=..., ready_at=..., restaurant_id=...)
    result = match(now, drivers, orders, TravelModel.great_circle(speed_kmh=25.0),
                   MatchParams(), policy="slack")
    for driver, order_indices in result.jobs:   # committed now; orders in drop-off sequence
        ...
    result.order_driver   # int64 per order: committed driver, -1 = keeps waiting
    result.order_held     # bool per order: its best driver is reserved but not free yet

A driver's ``(x, y)`` is where it is free from (its current position if idle,
the last drop-off of its current job otherwise) and ``free_at`` is when:
:func:`job_times` works both out from the job, for the simulator and the live cells alike.
Times are float minutes on any common origin.

Policies (``policy=``):

* ``"nearest"``: first come, first served; each order goes at once to the
  nearest idle driver (what a naive dispatcher does). No bundling.
* ``"slack"``: orders of the same restaurant with compatible ready times are
  bundled; each bundle's urgency is its best slack ``ready - arrival`` over
  candidate drivers (idle or free within ``lookahead``); bundles whose urgency
  is above ``commit_window`` wait, the rest are matched most urgent first, each
  to its cheapest candidate (cost: lateness, then idle wait and travel), then
  driver moves and swaps that lower the total cost fix the greedy's myopia.
  Urgency keeps falling while an order waits, so late orders rise to the top
  and are never starved.
* ``"optimal"``: same bundles and commit rule, but the committed bundles are
  matched to candidates by a min-cost assignment (scipy) per call.

Slack is ``ready - arrival`` with ``arrival = max(now, free_at) + travel +
pickup_lead``: for an idle driver and a future ready time this is the issue's
``max(0, ready - now) - travel``; it extends it to drivers who are still busy
(free-from time and place) and keeps falling once the food is ready, which is
what makes waiting orders more urgent. The urgency order is recomputed (a
fresh sort) at every call, since every key moves with ``now`` and the drivers.

A bundle matched to a driver that is not free yet is *held*: nobody else takes
that driver in this call and the bundle is reconsidered at the next tick (a
driver is never diverted). Candidates come from a grid k-nearest prefilter
(:func:`dispatch.kernels.nearest_candidates`), never from all pairs. Bundling,
prefilter, slack, greedy and exchanges are numba kernels (plain-Python twins
via :func:`dispatch.jit.load_twin`); only the ``optimal`` policy's assignment
is scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import ModuleType

import numpy as np

from dispatch import kernels
from dispatch.geo import EARTH_RADIUS_M

POLICIES = ("nearest", "slack", "optimal")


@dataclass(frozen=True)
class TravelModel:
    """How long driving between two points takes (see :mod:`dispatch.kernels` models)."""

    kind: int
    metres_per_minute: float

    @classmethod
    def mdrp(cls, metres_per_minute: float) -> "TravelModel":
        """MDRP rule: ceil(euclidean metres / metres per minute) on metre coordinates."""
        return cls(kernels.MDRP_EUCLIDEAN, float(metres_per_minute))

    @classmethod
    def great_circle(cls, speed_kmh: float = 25.0) -> "TravelModel":
        """Live traffic: great-circle distance at ``speed_kmh`` on (x=lng, y=lat) degrees."""
        return cls(kernels.GREAT_CIRCLE, speed_kmh * 1000.0 / 60.0)

    def minutes(self, from_x: float, from_y: float, to_x: float, to_y: float) -> float:
        """Travel time in minutes between two points (same arithmetic as the kernels)."""
        return kernels.travel_minutes(
            self.kind, self.metres_per_minute, float(from_x), float(from_y), float(to_x), float(to_y)
        )

    def planar_scale(self, mean_y: float) -> tuple[float, float]:
        """Metres per coordinate unit along x and y near latitude ``mean_y`` (for the prefilter)."""
        if self.kind == kernels.MDRP_EUCLIDEAN:
            return 1.0, 1.0
        metres_per_degree = EARTH_RADIUS_M * math.pi / 180.0
        return metres_per_degree * math.cos(math.radians(mean_y)), metres_per_degree


@dataclass(frozen=True)
class MatchParams:
    """Every knob of the matcher, with its default and why."""

    commit_window: float = 2.0
    """Commit a bundle once its best slack is at most this many minutes (else the driver would idle).
    Tuned on MDRP with 1-minute decisions: 0 and 3 were worse than 2."""
    lookahead: float = 20.0
    """Drivers free within this many minutes are candidates (they can be held, not committed)."""
    candidates_per_order: int = 24
    """Size k of the k-nearest spatial prefilter of drivers per bundle."""
    max_candidate_radius_m: float = math.inf
    """Drivers farther than this from the restaurant are never candidates."""
    pickup_lead: float = 0.0
    """Minutes between arriving at the restaurant and pickup (MDRP: half the pickup service)."""
    pickup_exit: float = 0.0
    """Minutes between pickup and leaving the restaurant (MDRP: the other half); only :func:`job_times` uses it."""
    dropoff_service: float = 0.0
    """Minutes of service at each door (MDRP: the full drop-off service time)."""
    lateness_weight: float = 10.0
    """Cost per minute the food waits for the driver."""
    idle_weight: float = 1.0
    """Cost per minute the driver waits for the food."""
    travel_weight: float = 1.0
    """Cost per minute of driving to the restaurant."""
    exchange_passes: int = 10
    """Passes of driver moves/swaps that lower total cost after the urgency-first greedy
    (the greedy decides which bundles are served, the exchanges who serves them)."""
    max_bundle_size: int = 4
    """Most orders in one bundle (also bounded by the driver's capacity)."""
    bundle_ready_window: float = 20.0
    """Most minutes between the ready times of two orders of one bundle."""
    bundle_max_delay: float = 4.0
    """Most minutes bundling may delay any order's door time, when drivers are plentiful."""
    bundle_max_delay_scarce: float = 35.0
    """Same bound when orders outnumber candidate drivers by ``bundle_scarcity_ratio``: then
    serving at all matters more than a few minutes. (MDRP, with the 20-minute ready window:
    30 to 40 all deliver every deliverable order on the o100t100*p100 days; 10 left 4% undelivered.)"""
    bundle_scarcity_ratio: float = 1.0
    """Pending orders per candidate driver above which drivers count as scarce."""
    tail_click_to_door: float = 75.0
    """Beyond this many minutes of projected click-to-door (food ready, the best candidate's lateness,
    the drive to the door), each further minute ranks a bundle as ``tail_weight`` minutes more urgent:
    slack alone ranks by lateness against the ready time, so under scarcity long-prep orders starved."""
    tail_weight: float = 1.0
    """See ``tail_click_to_door`` (0 ranks by slack alone)."""
    bundle_click_to_door_cap: float = 75.0
    """Bundling may not push an order's estimated click-to-door (from pickup at the bundle's ready
    time, or now if later) beyond this many minutes, unless alone it would be beyond it already:
    the last stops of scarce-time bundles were the long tail on MDRP days 1, 4 and 5."""
    bundle_cap_max_load: float = 2.0
    """The cap above holds while pending orders per candidate driver stay below this: when couriers
    run out (end-of-day shortages on MDRP day 1), bundling past the cap is what delivers at all.
    (MDRP, slack, against no cap: inf lost up to 3.4% of deliverable orders on day-1 s1 variants;
    2 loses 1 to 3 orders on nine of the 144 instances, at most 1.1%, keeps every order of the twelve
    o100t100*p100 days and leaves 15 orders of 5o100t100s1p100 over 90 min without a floor over 90
    (13 with inf, 51 without the cap); 1.5 left 38 there and raised its mean by 0.28 min.)"""


@dataclass(frozen=True)
class Drivers:
    """Drivers as parallel arrays: where (x, y) and when (free_at) each is free, its
    capacity (most orders it carries in one job; a driver takes one job per call)
    and its shift end (no pickup after it)."""

    x: np.ndarray
    y: np.ndarray
    free_at: np.ndarray
    capacity: np.ndarray
    shift_end: np.ndarray


@dataclass(frozen=True)
class Orders:
    """Pending orders as parallel arrays (restaurant position, drop-off, placed, ready)."""

    restaurant_x: np.ndarray
    restaurant_y: np.ndarray
    drop_x: np.ndarray
    drop_y: np.ndarray
    placed_at: np.ndarray
    ready_at: np.ndarray
    restaurant_id: np.ndarray


@dataclass(frozen=True)
class JobTimes:
    """A job's timeline (see :func:`job_times`), in minutes."""

    pickup: float
    """When the food is picked up (NaN for a job picked up already)."""
    departures: list[float]
    """When the driver leaves for each door (the restaurant, or the door before)."""
    arrivals: list[float]
    """When the driver reaches each door."""
    free_at: float
    """When the driver is free again: service at the last door done."""
    free_x: float
    free_y: float
    """Where the driver is free: the last door."""


def job_times(
    start: float, x: float, y: float, restaurant: tuple[float, float], ready_at: float,
    doors: list[tuple[float, float]], travel: TravelModel, params: MatchParams, picked_up: bool = False,
) -> JobTimes:
    """When a driver leaving ``(x, y)`` at ``start`` picks its job up, reaches each door in order and
    is free: pickup at ``max(arrival + pickup_lead, ready_at)``, leaving ``pickup_exit`` later, and
    ``dropoff_service`` at each door (the MDRP rules). With ``picked_up`` the food is on board:
    straight to the doors."""
    if picked_up:
        pickup, leave = math.nan, start
    else:
        arrival = start + travel.minutes(x, y, *restaurant)
        pickup = max(arrival + params.pickup_lead, ready_at)
        leave, (x, y) = pickup + params.pickup_exit, restaurant
    departures, arrivals = [], []
    for door_x, door_y in doors:
        arrive = leave + travel.minutes(x, y, door_x, door_y)
        departures.append(leave)
        arrivals.append(arrive)
        leave, x, y = arrive + params.dropoff_service, door_x, door_y
    return JobTimes(pickup, departures, arrivals, leave, float(x), float(y))


@dataclass
class MatchResult:
    """What :func:`match` decided."""

    jobs: list[tuple[int, list[int]]] = field(default_factory=list)
    """Committed (driver, orders in drop-off sequence), in commit order."""
    order_driver: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    order_held: np.ndarray = field(default_factory=lambda: np.empty(0, np.bool_))
    order_urgency: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))


def form_bundles(
    orders: Orders, travel: TravelModel, params: MatchParams, max_delay: float, max_size: int,
    now: float = -math.inf,
) -> list[list[int]]:
    """Group orders into jobs of at most ``max_size``: same restaurant, ready times
    at most ``bundle_ready_window`` apart, drop-off sequence by cheapest insertion, no order's
    door time delayed by more than ``max_delay`` against going alone, nor pushed past
    ``bundle_click_to_door_cap`` minutes after its placement (at ``now``).

    Orders are taken by ready time; each joins the open job of its restaurant
    where its insertion adds the fewest minutes, or opens a new job.
    Deterministic."""
    jobs, lengths = bundle_table(orders, travel, params, max_delay, max_size, now)
    return [row[:length].tolist() for row, length in zip(jobs, lengths)]


def bundle_table(
    orders: Orders, travel: TravelModel, params: MatchParams, max_delay: float, max_size: int,
    now: float = -math.inf, kernel_module: ModuleType = kernels,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`form_bundles` as arrays: (jobs, lengths), row j holding job j's orders, -1 padded."""
    n = len(orders.ready_at)
    by_restaurant = np.lexsort((np.arange(n), orders.ready_at, orders.restaurant_id)).astype(np.int64)
    return kernel_module.bundle_orders(
        by_restaurant,
        np.ascontiguousarray(orders.restaurant_id, np.int64),
        *(np.ascontiguousarray(a, np.float64) for a in (
            orders.restaurant_x, orders.restaurant_y, orders.drop_x, orders.drop_y, orders.ready_at,
            orders.placed_at)),
        travel.kind, travel.metres_per_minute, float(params.dropoff_service), float(params.bundle_ready_window),
        float(max_delay), int(max_size), float(now), float(params.bundle_click_to_door_cap),
    )


def match(
    now: float,
    drivers: Drivers,
    orders: Orders,
    travel: TravelModel,
    params: MatchParams = MatchParams(),
    policy: str = "slack",
    kernel_module: ModuleType = kernels,
) -> MatchResult:
    """Decide, at time ``now``, which pending orders are committed to which drivers.

    ``kernel_module`` is :mod:`dispatch.kernels` or its plain-Python twin
    (:func:`dispatch.jit.load_twin`): both give the same result."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
    n_orders = len(orders.ready_at)
    result = MatchResult(
        order_driver=np.full(n_orders, -1, np.int64),
        order_held=np.zeros(n_orders, np.bool_),
        order_urgency=np.full(n_orders, np.inf),
    )
    horizon = now if policy == "nearest" else now + params.lookahead
    pool = np.flatnonzero((drivers.free_at <= horizon) & (drivers.shift_end >= now))
    if n_orders == 0 or len(pool) == 0:
        return result

    if policy == "nearest":
        jobs = np.argsort(orders.placed_at, kind="mergesort").astype(np.int64).reshape(-1, 1)
        job_size = np.ones(n_orders, np.int64)
    else:
        scarce = n_orders >= params.bundle_scarcity_ratio * len(pool)
        max_delay = params.bundle_max_delay_scarce if scarce else params.bundle_max_delay
        if n_orders >= params.bundle_cap_max_load * len(pool):
            params = replace(params, bundle_click_to_door_cap=math.inf)
        # No bundle larger than any candidate can carry, or it would never be served.
        max_size = min(params.max_bundle_size, int(drivers.capacity[pool].max()))
        jobs, job_size = bundle_table(orders, travel, params, max_delay, max_size, now, kernel_module)
    leads = jobs[:, 0]
    job_x = np.ascontiguousarray(orders.restaurant_x[leads], np.float64)
    job_y = np.ascontiguousarray(orders.restaurant_y[leads], np.float64)
    job_ready = np.where(jobs >= 0, np.asarray(orders.ready_at, np.float64)[jobs], -np.inf).max(axis=1)

    pool_x = np.ascontiguousarray(drivers.x[pool], np.float64)
    pool_y = np.ascontiguousarray(drivers.y[pool], np.float64)
    scale_x, scale_y = travel.planar_scale(float(np.mean(pool_y)))
    k = min(params.candidates_per_order, len(pool))
    candidates = kernel_module.nearest_candidates(
        job_x, job_y, pool_x, pool_y, scale_x, scale_y, k, params.max_candidate_radius_m
    )
    weights = (0.0, 0.0, 1.0) if policy == "nearest" else (
        params.lateness_weight, params.idle_weight, params.travel_weight)
    candidates, _, _, cost, urgency = kernel_module.slack_and_cost(
        float(now), candidates, pool_x, pool_y,
        np.ascontiguousarray(drivers.free_at[pool], np.float64),
        np.ascontiguousarray(drivers.shift_end[pool], np.float64),
        job_x, job_y, job_ready, params.pickup_lead, travel.kind, travel.metres_per_minute, *weights,
    )
    capacity = np.ascontiguousarray(drivers.capacity[pool], np.int64)
    if policy == "nearest":
        priority = np.arange(len(jobs), dtype=np.float64)
        eligible = np.ones(len(jobs), np.bool_)
    else:
        priority = urgency - params.tail_weight * np.maximum(
            0.0, projected_click_to_door(orders, jobs, job_ready, urgency, travel, kernel_module)
            - params.tail_click_to_door)
        eligible = urgency <= params.commit_window
    if policy == "optimal":
        job_driver = _min_cost_assignment(eligible, candidates, cost, job_size, capacity)
    else:
        job_driver = kernel_module.assign_in_priority_order(priority, eligible, candidates, cost, job_size, capacity)
        if policy == "slack" and params.exchange_passes > 0:
            job_driver = kernel_module.improve_by_exchanges(
                job_driver, candidates, cost, job_size, capacity, params.exchange_passes)

    for stop in range(jobs.shape[1]):
        members = jobs[:, stop] >= 0
        result.order_urgency[jobs[members, stop]] = urgency[members]
    commit_order = np.argsort(priority, kind="mergesort")
    for j in commit_order[job_driver[commit_order] >= 0]:
        job = jobs[j, : job_size[j]].tolist()
        driver = int(pool[job_driver[j]])
        if drivers.free_at[driver] <= now:
            result.order_driver[job] = driver
            result.jobs.append((driver, job))
        else:
            result.order_held[job] = True
    return result


def projected_click_to_door(
    orders: Orders, jobs: np.ndarray, job_ready: np.ndarray, urgency: np.ndarray, travel: TravelModel,
    kernel_module: ModuleType = kernels,
) -> np.ndarray:
    """Per job, the longest click-to-door of its orders if its best candidate took it now: food ready
    (or the driver there, if later) then straight to the door. +inf without any candidate."""
    legs = kernel_module.travel_minutes_each(travel.kind, travel.metres_per_minute, *(
        np.ascontiguousarray(a, np.float64) for a in (orders.restaurant_x, orders.restaurant_y, orders.drop_x,
                                                      orders.drop_y)))
    member = jobs >= 0
    to_door = np.where(member, (legs - np.asarray(orders.placed_at, np.float64))[jobs], -np.inf).max(axis=1)
    return job_ready + np.maximum(0.0, -urgency) + to_door


def _min_cost_assignment(eligible, candidates, cost, job_size, capacity) -> np.ndarray:
    """Min-cost matching of eligible jobs to their candidate drivers (one job per driver)."""
    from scipy.optimize import linear_sum_assignment

    job_driver = np.full(len(candidates), -1, np.int64)
    rows = np.flatnonzero(eligible)
    if len(rows) == 0:
        return job_driver
    columns = np.unique(candidates[rows][candidates[rows] >= 0])
    if len(columns) == 0:
        return job_driver
    column_of = {int(d): c for c, d in enumerate(columns)}
    forbidden = 1e12
    matrix = np.full((len(rows), len(columns)), forbidden)
    for r, j in enumerate(rows):
        for c in range(candidates.shape[1]):
            d = candidates[j, c]
            if d >= 0 and capacity[d] >= job_size[j]:
                matrix[r, column_of[int(d)]] = min(matrix[r, column_of[int(d)]], cost[j, c])
    assigned_rows, assigned_columns = linear_sum_assignment(matrix)
    for r, c in zip(assigned_rows, assigned_columns):
        if matrix[r, c] < forbidden:
            job_driver[rows[r]] = columns[c]
    return job_driver
