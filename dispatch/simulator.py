"""Discrete-event replay of an MDRP day through the matcher, under the MDRP rules.

Rules enforced by construction (and re-checked by :mod:`dispatch.feasibility`):
travel = ceil(euclidean metres / metres per minute); pickup no earlier than the
latest ready time of the bundle nor than arrival + half the pickup service, and
never after the courier's off time; drop-off at arrival + half the drop-off
service; a courier takes a new job only while idle (never diverted en route);
no assignment before every order in it was placed. Decisions are taken every
``epoch`` simulated minutes; the clock jumps over stretches with nothing pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from dispatch.eta import EXPECTED_WINDOW, expected_orders, forecast
from dispatch.matcher import Drivers, MatchParams, Orders, TravelModel, job_times, match
from dispatch.mdrp import Instance

ON_LOCATION = "0"
"""Origin label of a courier's first move (its on-location) in the couriers solution file."""


@dataclass(frozen=True)
class AssignmentRecord:
    """One pickup job: when it was decided, when the food was picked up, by whom, which orders."""

    assignment_time: float
    pickup_time: float
    courier: int
    orders: tuple[int, ...]


@dataclass(frozen=True)
class CourierMove:
    """A courier leaving ``origin`` for ``destination`` (labels as in the solution files)."""

    courier: int
    departure_time: float
    origin: str
    destination: str


@dataclass
class Solution:
    """The outcome of a replay: per-order times (NaN when undelivered), jobs and moves."""

    instance: Instance
    policy: str
    assignments: list[AssignmentRecord] = field(default_factory=list)
    moves: list[CourierMove] = field(default_factory=list)
    pickup_time: np.ndarray = field(default_factory=lambda: np.empty(0))
    dropoff_time: np.ndarray = field(default_factory=lambda: np.empty(0))
    order_courier: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    eta_placement: np.ndarray = field(default_factory=lambda: np.empty(0))
    """Raw forecast (:func:`dispatch.eta.forecast`) of each order's drop-off, at the tick it was placed."""
    eta_placement_delay: np.ndarray = field(default_factory=lambda: np.empty(0))
    eta_placement_load: np.ndarray = field(default_factory=lambda: np.empty(0))
    """That forecast's courier delay (pickup minus ready) and load, which pick the calibration band."""
    eta_assignment: np.ndarray = field(default_factory=lambda: np.empty(0))
    """Drop-off estimate when the order was committed: its job's plan."""
    eta_pickup: np.ndarray = field(default_factory=lambda: np.empty(0))
    """Drop-off estimate at pickup: the rest of the job's plan from the restaurant."""


def label_position(instance: Instance, courier: int, label: str) -> tuple[float, float]:
    """Coordinates of a move label: a restaurant id, an order id, or the courier's on-location."""
    if label in instance.restaurant_index:
        r = instance.restaurant_index[label]
        return float(instance.restaurant_x[r]), float(instance.restaurant_y[r])
    if label in instance.order_index:
        o = instance.order_index[label]
        return float(instance.order_x[o]), float(instance.order_y[o])
    return float(instance.courier_x[courier]), float(instance.courier_y[courier])


def mdrp_match_params(instance: Instance, params: MatchParams) -> MatchParams:
    """``params`` with the instance's service times filled in."""
    return replace(params, pickup_lead=instance.pickup_service / 2, pickup_exit=instance.pickup_service / 2,
                   dropoff_service=instance.dropoff_service)


def replay(
    instance: Instance,
    policy: str = "slack",
    params: MatchParams = MatchParams(),
    epoch: float = 1.0,
    on_tick=None,
    eta_window: float = EXPECTED_WINDOW,
) -> Solution:
    """Replay ``instance`` with ``policy``; ``on_tick(now)`` (optional) observes progress. Each order's
    drop-off is forecast when it is placed (orders placed in the last ``eta_window`` minutes are
    expected again), at assignment and at pickup (``Solution.eta_*``)."""
    travel = TravelModel.mdrp(instance.metres_per_minute)
    params = mdrp_match_params(instance, params)
    n_orders = instance.n_orders
    solution = Solution(
        instance=instance,
        policy=policy,
        pickup_time=np.full(n_orders, np.nan),
        dropoff_time=np.full(n_orders, np.nan),
        order_courier=np.full(n_orders, -1, np.int64),
        eta_placement=np.full(n_orders, np.nan),
        eta_placement_delay=np.full(n_orders, np.nan),
        eta_placement_load=np.full(n_orders, np.nan),
        eta_assignment=np.full(n_orders, np.nan),
        eta_pickup=np.full(n_orders, np.nan),
    )
    courier_x = instance.courier_x.copy()
    courier_y = instance.courier_y.copy()
    free_at = instance.courier_on.copy()
    label = [ON_LOCATION] * instance.n_couriers
    # MDRP bundles have no size limit; the matcher's max_bundle_size is the only bound.
    capacity = np.full(instance.n_couriers, params.max_bundle_size, np.int64)
    restaurant_x = instance.restaurant_x[instance.order_restaurant]
    restaurant_y = instance.restaurant_y[instance.order_restaurant]
    assigned = np.zeros(n_orders, np.bool_)

    def order_arrays(indices: np.ndarray) -> Orders:
        return Orders(
            restaurant_x=restaurant_x[indices],
            restaurant_y=restaurant_y[indices],
            drop_x=instance.order_x[indices],
            drop_y=instance.order_y[indices],
            placed_at=instance.order_placed[indices],
            ready_at=instance.order_ready[indices],
            restaurant_id=instance.order_restaurant[indices],
        )

    placements = np.sort(instance.order_placed)
    last_off = float(instance.courier_off.max(initial=0.0))

    now = float(placements[0]) if n_orders else last_off + 1
    while now <= last_off:
        if on_tick is not None:
            on_tick(now)
        pending = np.flatnonzero(~assigned & (instance.order_placed <= now))
        if len(pending):
            orders = order_arrays(pending)
            drivers = Drivers(courier_x, courier_y, free_at, capacity, instance.courier_off)
            new = np.isnan(solution.eta_placement[pending])
            if new.any():
                recent = np.flatnonzero((instance.order_placed > now - eta_window) & (instance.order_placed <= now))
                promised = forecast(now, drivers, orders, travel, params,
                                    expected_orders(order_arrays(recent), now, eta_window))
                solution.eta_placement[pending[new]] = promised.door[new] + instance.dropoff_service / 2
                solution.eta_placement_delay[pending[new]] = promised.courier_delay[new]
                solution.eta_placement_load[pending[new]] = promised.load
            decision = match(now, drivers, orders, travel, params, policy)
            for courier, local_orders in decision.jobs:
                job = [int(pending[i]) for i in local_orders]
                assigned[job] = True
                _execute(instance, solution, travel, params, now, courier, job, courier_x, courier_y, free_at, label)
            now += epoch
        else:
            later = placements[placements > now]
            now = float(later[0]) if len(later) else last_off + 1
    return solution


def _execute(instance, solution, travel, params, now, courier, job, courier_x, courier_y, free_at, label) -> None:
    """Send ``courier`` (idle at ``now``) to pick up ``job`` and drop it off in order."""
    restaurant = int(instance.order_restaurant[job[0]])
    rx, ry = float(instance.restaurant_x[restaurant]), float(instance.restaurant_y[restaurant])
    restaurant_label = instance.restaurant_ids[restaurant]
    times = job_times(now, courier_x[courier], courier_y[courier], (rx, ry),
                      max(float(instance.order_ready[o]) for o in job),
                      [(instance.order_x[o], instance.order_y[o]) for o in job], travel, params)
    solution.moves.append(CourierMove(courier, now, label[courier], restaurant_label))
    solution.assignments.append(AssignmentRecord(now, times.pickup, courier, tuple(job)))
    origin = restaurant_label
    # At pickup, the plan is remade from the restaurant with the food on board (as a live cell does).
    from_restaurant = job_times(times.pickup + params.pickup_exit, rx, ry, (rx, ry), times.pickup,
                                [(instance.order_x[o], instance.order_y[o]) for o in job], travel, params,
                                picked_up=True)
    for order, leave, arrive, planned in zip(job, times.departures, times.arrivals, from_restaurant.arrivals):
        solution.moves.append(CourierMove(courier, leave, origin, instance.order_ids[order]))
        solution.pickup_time[order] = times.pickup
        solution.dropoff_time[order] = arrive + instance.dropoff_service / 2
        # Deterministic MDRP travel: the plan made at assignment (and at pickup) is what happens.
        solution.eta_assignment[order] = arrive + instance.dropoff_service / 2
        solution.eta_pickup[order] = planned + instance.dropoff_service / 2
        solution.order_courier[order] = courier
        origin = instance.order_ids[order]
    courier_x[courier], courier_y[courier] = times.free_x, times.free_y
    free_at[courier] = times.free_at
    label[courier] = origin
