"""Independent check of a replay against the MDRP rules; returns the violations found."""

from __future__ import annotations

import bisect
import math

from dispatch.simulator import ON_LOCATION, Solution, label_position


def check_solution(solution: Solution) -> list[str]:
    """Every broken rule as a human-readable line (empty list: the solution is feasible).

    Recomputes each courier's timeline from the instance alone: one job at a
    time, started no earlier than on-time, the end of the previous job, and
    every order's placement; pickup after arrival + half service and after all
    ready times, and not after off-time; one restaurant per job; exact drop-off
    times; each order delivered at most once; and the public evaluator's
    courier-timeline checks (moves chained, departures after arrivals, courier
    at the restaurant at pickup and at the door at drop-off).
    """
    inst = solution.instance
    half_pickup, half_dropoff = inst.pickup_service / 2, inst.dropoff_service / 2
    problems: list[str] = []
    seen: set[int] = set()
    position = {c: (inst.courier_x[c], inst.courier_y[c], inst.courier_on[c]) for c in range(inst.n_couriers)}
    for job in sorted(solution.assignments, key=lambda a: (a.courier, a.assignment_time)):
        c, t, orders = job.courier, job.assignment_time, job.orders
        tag = f"courier {inst.courier_ids[c]} job at {t:g}"
        x, y, free_from = position[c]
        if t < free_from:
            problems.append(f"{tag}: assigned before the courier is free ({free_from:g})")
        repeated = seen.intersection(orders)
        if repeated:
            problems.append(f"{tag}: orders assigned twice {sorted(inst.order_ids[o] for o in repeated)}")
        seen.update(orders)
        if len({int(inst.order_restaurant[o]) for o in orders}) != 1:
            problems.append(f"{tag}: bundle spans several restaurants")
        if any(inst.order_placed[o] > t for o in orders):
            problems.append(f"{tag}: assigned before an order was placed")
        r = int(inst.order_restaurant[orders[0]])
        rx, ry = inst.restaurant_x[r], inst.restaurant_y[r]
        earliest = max(t + float(inst.travel(x, y, rx, ry)) + half_pickup, max(inst.order_ready[o] for o in orders))
        if job.pickup_time < earliest:
            problems.append(f"{tag}: pickup {job.pickup_time:g} before earliest possible {earliest:g}")
        if job.pickup_time > inst.courier_off[c]:
            problems.append(f"{tag}: pickup {job.pickup_time:g} after off-time {inst.courier_off[c]:g}")
        leave, x, y = job.pickup_time + half_pickup, rx, ry
        for o in orders:
            dropoff = leave + float(inst.travel(x, y, inst.order_x[o], inst.order_y[o])) + half_dropoff
            if solution.dropoff_time[o] != dropoff or solution.pickup_time[o] != job.pickup_time:
                problems.append(f"{tag}: order {inst.order_ids[o]} times inconsistent")
            if solution.order_courier[o] != c:
                problems.append(f"{tag}: order {inst.order_ids[o]} recorded with another courier")
            leave, x, y = dropoff + half_dropoff, inst.order_x[o], inst.order_y[o]
        position[c] = (x, y, leave)
    delivered = {o for o in range(inst.n_orders) if not math.isnan(solution.dropoff_time[o])}
    if delivered != seen:
        problems.append(f"{len(delivered ^ seen)} orders delivered without a job or vice versa")
    problems += _timeline_problems(solution)
    return problems


def _timeline_problems(solution: Solution) -> list[str]:
    """The public evaluator's courier-timeline checks: moves chained origin to
    destination, departures never before arrivals, and the courier at the
    restaurant at each pickup time and at the door at each drop-off time."""
    inst = solution.instance
    times: dict[int, list[float]] = {c: [float(inst.courier_on[c])] for c in range(inst.n_couriers)}
    places: dict[int, list[str]] = {c: [ON_LOCATION] for c in range(inst.n_couriers)}
    problems = []
    for move in solution.moves:
        c = move.courier
        if move.origin != places[c][-1]:
            problems.append(f"courier {inst.courier_ids[c]}: move from {move.origin}, expected {places[c][-1]}")
        origin = label_position(inst, c, move.origin)
        arrival = move.departure_time + float(inst.travel(*origin, *label_position(inst, c, move.destination)))
        times[c] += [move.departure_time, arrival]
        places[c] += ["", move.destination]
    for c, timeline in times.items():
        if timeline != sorted(timeline):
            problems.append(f"courier {inst.courier_ids[c]}: departs before arriving")

    def place_at(c: int, t: float) -> str:
        return places[c][bisect.bisect_left(times[c], t) - 1]

    for a in solution.assignments:
        restaurant = inst.restaurant_ids[int(inst.order_restaurant[a.orders[0]])]
        if place_at(a.courier, a.pickup_time) != restaurant:
            problems.append(f"courier {inst.courier_ids[a.courier]} not at {restaurant} at pickup {a.pickup_time:g}")
        for o in a.orders:
            if place_at(a.courier, solution.dropoff_time[o]) != inst.order_ids[o]:
                problems.append(f"courier {inst.courier_ids[a.courier]} not at {inst.order_ids[o]} at drop-off")
    return problems
