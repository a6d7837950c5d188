"""Numba kernels of the matcher; their plain-Python twins come from :func:`dispatch.jit.load_twin`.

All times are float64 minutes, all indices int64, and every kernel is
deterministic (ties break by lower index), so a kernel and its twin return
identical arrays. Positions are ``(x, y)``: metres for the MDRP model,
``(lng, lat)`` degrees for the great-circle model.
"""

from __future__ import annotations

import math

import numpy as np

from dispatch.geo import EARTH_RADIUS_M, haversine_m
from dispatch.jit import kernel_decorator

kernel = kernel_decorator(globals())

MDRP_EUCLIDEAN = 0
"""Travel model: ceil(euclidean metres / metres per minute), whole minutes (MDRP rule)."""
GREAT_CIRCLE = 1
"""Travel model: great-circle metres / metres per minute on (x=lng, y=lat) degrees."""

great_circle_m = kernel(haversine_m)


@kernel
def travel_minutes(model, metres_per_minute, from_x, from_y, to_x, to_y):
    """Travel time in minutes between two points under ``model``."""
    if model == MDRP_EUCLIDEAN:
        dx = to_x - from_x
        dy = to_y - from_y
        return float(math.ceil(math.sqrt(dx * dx + dy * dy) / metres_per_minute))
    return great_circle_m(from_y, from_x, to_y, to_x) / metres_per_minute


@kernel
def travel_minutes_each(model, metres_per_minute, from_x, from_y, to_x, to_y):
    """:func:`travel_minutes` of each pair of points, elementwise over equal-length arrays."""
    result = np.empty(from_x.shape[0], np.float64)
    for i in range(from_x.shape[0]):
        result[i] = travel_minutes(model, metres_per_minute, from_x[i], from_y[i], to_x[i], to_y[i])
    return result


@kernel
def nearest_candidates(query_x, query_y, point_x, point_y, scale_x, scale_y, k, max_radius_m):
    """For each query, the indices of its (up to) ``k`` nearest points, nearest first, -1 padded.

    Distances are planar after scaling coordinates by ``scale_x``/``scale_y``
    (metres per unit); points farther than ``max_radius_m`` are ignored. A
    uniform grid over the points is searched ring by ring and the search stops
    as soon as no unvisited cell can hold a nearer point, so the result is the
    exact k-nearest set without looking at all pairs.
    """
    n_queries = query_x.shape[0]
    n_points = point_x.shape[0]
    result = np.full((n_queries, k), -1, np.int64)
    if n_points == 0 or k == 0:
        return result
    px = point_x * scale_x
    py = point_y * scale_y
    min_x = px.min()
    min_y = py.min()
    width = px.max() - min_x
    height = py.max() - min_y
    # About two points per cell; degenerate extents collapse to one cell. A few points along a line
    # (tiny area, long side) get at most one cell per point along it, not thousands of empty ones.
    cell = math.sqrt(max(width * height, 1.0) * 2.0 / n_points)
    cell = max(cell, width / 1024.0, height / 1024.0, max(width, height) / n_points, 1e-9)
    n_cols = int(width / cell) + 1
    n_rows = int(height / cell) + 1
    cell_of = np.empty(n_points, np.int64)
    cell_start = np.zeros(n_cols * n_rows + 1, np.int64)
    for i in range(n_points):
        c = int((px[i] - min_x) / cell) + n_cols * int((py[i] - min_y) / cell)
        cell_of[i] = c
        cell_start[c + 1] += 1
    for c in range(n_cols * n_rows):
        cell_start[c + 1] += cell_start[c]
    fill = cell_start[:-1].copy()
    by_cell = np.empty(n_points, np.int64)
    for i in range(n_points):
        by_cell[fill[cell_of[i]]] = i
        fill[cell_of[i]] += 1
    max_radius2 = max_radius_m * max_radius_m
    best_d2 = np.empty(k, np.float64)
    best_i = np.empty(k, np.int64)
    for q in range(n_queries):
        qx = query_x[q] * scale_x
        qy = query_y[q] * scale_y
        q_col = int(math.floor((qx - min_x) / cell))
        q_row = int(math.floor((qy - min_y) / cell))
        last_ring = max(abs(q_col), abs(q_col - n_cols + 1), abs(q_row), abs(q_row - n_rows + 1))
        found = 0
        # Rings nearer than the grid hold no cell: a query outside it starts at the first that reaches it.
        ring = max(0, -q_col, q_col - n_cols + 1, -q_row, q_row - n_rows + 1)
        while ring <= last_ring:
            for row in range(max(q_row - ring, 0), min(q_row + ring, n_rows - 1) + 1):
                on_edge_row = row == q_row - ring or row == q_row + ring
                step = 1 if on_edge_row else 2 * ring
                col = q_col - ring
                last_col = q_col + ring
                if on_edge_row:  # a whole row of the ring: only its columns inside the grid can hold points
                    col = max(col, 0)
                    last_col = min(last_col, n_cols - 1)
                while col <= last_col:
                    if 0 <= col < n_cols:
                        c = col + n_cols * row
                        for slot in range(cell_start[c], cell_start[c + 1]):
                            p = by_cell[slot]
                            dx = px[p] - qx
                            dy = py[p] - qy
                            d2 = dx * dx + dy * dy
                            if d2 > max_radius2 or (found == k and d2 >= best_d2[k - 1]):
                                continue
                            pos = found if found < k else k - 1
                            while pos > 0 and best_d2[pos - 1] > d2:
                                best_d2[pos] = best_d2[pos - 1]
                                best_i[pos] = best_i[pos - 1]
                                pos -= 1
                            best_d2[pos] = d2
                            best_i[pos] = p
                            if found < k:
                                found += 1
                    if step == 0:
                        break
                    col += step
            # Unvisited cells are at least `ring` whole cells away from the query.
            reach = ring * cell
            if reach > max_radius_m or (found == k and best_d2[k - 1] <= reach * reach):
                break
            ring += 1
        for j in range(found):
            result[q, j] = best_i[j]
    return result


@kernel
def slack_and_cost(
    now,
    candidates,
    driver_x,
    driver_y,
    driver_free_at,
    driver_shift_end,
    job_x,
    job_y,
    job_ready,
    pickup_lead,
    model,
    metres_per_minute,
    lateness_weight,
    idle_weight,
    travel_weight,
):
    """Slack and cost of every (job, candidate driver) pair, and each job's urgency.

    arrival = max(now, free_at) + travel(driver -> job) + pickup_lead;
    slack = ready - arrival (positive: the driver would wait; negative: the
    food waits); cost = lateness_weight * max(0, -slack)
    + idle_weight * max(0, slack) + travel_weight * travel. A candidate that
    could only pick up after its shift end is dropped (set to -1). Urgency is
    the best (largest) slack over the remaining candidates, +inf without any.
    Returns (candidates, travel, slack, cost, urgency).
    """
    n_jobs, k = candidates.shape
    kept = candidates.copy()
    travel = np.zeros((n_jobs, k), np.float64)
    slack = np.full((n_jobs, k), -np.inf)
    cost = np.full((n_jobs, k), np.inf)
    urgency = np.full(n_jobs, np.inf)
    for j in range(n_jobs):
        best = -np.inf
        for c in range(k):
            d = candidates[j, c]
            if d < 0:
                continue
            t = travel_minutes(model, metres_per_minute, driver_x[d], driver_y[d], job_x[j], job_y[j])
            arrival = max(now, driver_free_at[d]) + t + pickup_lead
            if max(arrival, job_ready[j]) > driver_shift_end[d]:
                kept[j, c] = -1
                continue
            s = job_ready[j] - arrival
            travel[j, c] = t
            slack[j, c] = s
            cost[j, c] = lateness_weight * max(0.0, -s) + idle_weight * max(0.0, s) + travel_weight * t
            if s > best:
                best = s
        if best > -np.inf:
            urgency[j] = best
    return kept, travel, slack, cost, urgency


@kernel
def assign_in_priority_order(priority, eligible, candidates, cost, job_size, driver_capacity):
    """Greedy assignment: eligible jobs, lowest priority value first (ties by index),
    each take their cheapest candidate driver whose capacity holds the job.

    A driver takes at most one job per call. Returns the driver of each job
    (-1 when unassigned).
    """
    n_jobs, k = candidates.shape
    job_driver = np.full(n_jobs, -1, np.int64)
    taken = np.zeros(driver_capacity.shape[0], np.bool_)
    for j in np.argsort(priority, kind="mergesort"):
        if not eligible[j]:
            continue
        best_c = -1
        best_cost = np.inf
        for c in range(k):
            d = candidates[j, c]
            if d < 0 or taken[d] or driver_capacity[d] < job_size[j]:
                continue
            if cost[j, c] < best_cost:
                best_cost = cost[j, c]
                best_c = c
        if best_c >= 0:
            d = candidates[j, best_c]
            job_driver[j] = d
            taken[d] = True
    return job_driver


@kernel
def pair_cost(candidates, cost, job, driver):
    """Cost of giving ``job`` to ``driver``; +inf when the driver is not its candidate."""
    for c in range(candidates.shape[1]):
        if candidates[job, c] == driver:
            return cost[job, c]
    return np.inf


@kernel
def improve_by_exchanges(job_driver, candidates, cost, job_size, driver_capacity, max_passes):
    """Local search on a one-job-per-driver assignment that keeps the same jobs served:
    move a job to a free candidate driver, or swap the drivers of two jobs, whenever
    that lowers the total cost. First improvement, jobs in index order, at most
    ``max_passes`` passes. Returns the improved job -> driver array.
    """
    n_jobs, k = candidates.shape
    result = job_driver.copy()
    job_of_driver = np.full(driver_capacity.shape[0], -1, np.int64)
    for j in range(n_jobs):
        if result[j] >= 0:
            job_of_driver[result[j]] = j
    for _ in range(max_passes):
        improved = False
        for a in range(n_jobs):
            driver_a = result[a]
            if driver_a < 0:
                continue
            cost_a = pair_cost(candidates, cost, a, driver_a)
            for c in range(k):
                d = candidates[a, c]
                if d < 0 or d == driver_a or driver_capacity[d] < job_size[a]:
                    continue
                b = job_of_driver[d]
                if b < 0:
                    if cost[a, c] < cost_a:
                        job_of_driver[driver_a] = -1
                        job_of_driver[d] = a
                        result[a] = d
                        driver_a, cost_a = d, cost[a, c]
                        improved = True
                    continue
                if driver_capacity[driver_a] < job_size[b]:
                    continue
                cost_b = pair_cost(candidates, cost, b, d)
                cost_b_swapped = pair_cost(candidates, cost, b, driver_a)
                if cost[a, c] + cost_b_swapped < cost_a + cost_b:
                    result[a], result[b] = d, driver_a
                    job_of_driver[d], job_of_driver[driver_a] = a, b
                    driver_a, cost_a = d, cost[a, c]
                    improved = True
        if not improved:
            break
    return result


@kernel
def drop_leg_minutes(model, metres_per_minute, from_order, to_order, restaurant_x, restaurant_y,
                     drop_x, drop_y, dropoff_service):
    """Minutes from leaving ``from_order``'s door (-1: the restaurant) to leaving ``to_order``'s."""
    if from_order < 0:
        ax, ay = restaurant_x[to_order], restaurant_y[to_order]
    else:
        ax, ay = drop_x[from_order], drop_y[from_order]
    return travel_minutes(model, metres_per_minute, ax, ay, drop_x[to_order], drop_y[to_order]) + dropoff_service


@kernel
def bundle_orders(by_restaurant, restaurant_id, restaurant_x, restaurant_y, drop_x, drop_y, ready, placed,
                  model, metres_per_minute, dropoff_service, ready_window, max_delay, max_size, now,
                  click_to_door_cap):
    """Bundle orders of the same restaurant; see :func:`dispatch.matcher.form_bundles`.

    ``by_restaurant`` lists the order indices sorted by (restaurant, ready, index).
    A door time counts from pickup at the bundle's latest ready time, or ``now`` if later.
    Returns (jobs, job_length): row j of ``jobs`` holds job j's orders in drop-off
    sequence, -1 padded. Jobs come restaurant by restaurant, in opening order.
    """
    n = by_restaurant.shape[0]
    width = max(max_size, 1)
    jobs = np.full((n, width), -1, np.int64)
    job_length = np.zeros(n, np.int64)
    job_route = np.zeros(n, np.float64)
    trial = np.empty(width, np.int64)
    best_sequence = np.empty(width, np.int64)
    n_jobs = 0
    first_job = 0
    for i in range(n):
        order = by_restaurant[i]
        if i == 0 or restaurant_id[order] != restaurant_id[by_restaurant[i - 1]]:
            first_job = n_jobs
        best_job = -1
        best_added = np.inf
        best_route = 0.0
        for job in range(first_job, n_jobs):
            length = job_length[job]
            if length >= max_size:
                continue
            pickup = ready[order]
            earliest = ready[order]
            for s in range(length):
                pickup = max(pickup, ready[jobs[job, s]])
                earliest = min(earliest, ready[jobs[job, s]])
            if pickup - earliest > ready_window:
                continue
            for position in range(length + 1):
                for s in range(length + 1):
                    if s < position:
                        trial[s] = jobs[job, s]
                    elif s == position:
                        trial[s] = order
                    else:
                        trial[s] = jobs[job, s - 1]
                elapsed = 0.0
                previous = -1
                ok = True
                for s in range(length + 1):
                    stop = trial[s]
                    elapsed += drop_leg_minutes(model, metres_per_minute, previous, stop, restaurant_x,
                                                restaurant_y, drop_x, drop_y, dropoff_service)
                    previous = stop
                    solo = drop_leg_minutes(model, metres_per_minute, -1, stop, restaurant_x, restaurant_y,
                                            drop_x, drop_y, dropoff_service)
                    if pickup + elapsed - (ready[stop] + solo) > max_delay:
                        ok = False
                        break
                    # The tail: no order is pushed past the cap by others, unless alone it is past it already.
                    door = max(pickup, now) + elapsed
                    if door - placed[stop] > click_to_door_cap and door > max(ready[stop], now) + solo:
                        ok = False
                        break
                if ok and elapsed - job_route[job] < best_added:
                    best_added = elapsed - job_route[job]
                    best_job = job
                    best_route = elapsed
                    best_sequence[: length + 1] = trial[: length + 1]
        if best_job < 0:
            jobs[n_jobs, 0] = order
            job_length[n_jobs] = 1
            job_route[n_jobs] = drop_leg_minutes(model, metres_per_minute, -1, order, restaurant_x, restaurant_y,
                                                 drop_x, drop_y, dropoff_service)
            n_jobs += 1
        else:
            job_length[best_job] += 1
            jobs[best_job, : job_length[best_job]] = best_sequence[: job_length[best_job]]
            job_route[best_job] = best_route
    return jobs[:n_jobs], job_length[:n_jobs]


# Nearest available drivers of one cell (``dispatch.cell.DriverIndex``) -----------------------------

METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180.0
"""Great-circle metres per degree of latitude (and of longitude on the equator)."""
#: Lower bounds are shrunk by this relative margin (and a micrometre), so float rounding never prunes a point.
_BOUND_SLACK = 1e-9


@kernel
def _grid_lower_bound_m(query_lat, query_lng, lat_lo, lat_hi, lng_lo, lng_hi, centre_lng):
    """A lower bound, in metres, of the distance from the query to any point outside a lat/lng box holding it.

    A point outside the box in latitude is at least the latitude gap away; one
    inside it in latitude but outside in longitude is at least as far as the
    haversine of the longitude gap at the box's smallest cosine of latitude.
    Longitudes are frame values within 180 degrees of ``centre_lng``, so a gap
    is only trusted up to ``180 - |query_lng - centre_lng|`` degrees.
    """
    gap_lat = max(min(query_lat - lat_lo, lat_hi - query_lat), 0.0)
    bound = gap_lat * METRES_PER_DEGREE
    gap_lng = max(min(query_lng - lng_lo, lng_hi - query_lng, 180.0 - abs(query_lng - centre_lng)), 0.0)
    cos_min = max(min(math.cos(math.radians(lat_lo)), math.cos(math.radians(lat_hi))), 0.0)
    cos_query = max(math.cos(math.radians(query_lat)), 0.0)
    half = math.sin(math.radians(gap_lng) / 2.0)
    across = 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(cos_query * cos_min) * half))
    return max(min(bound, across) * (1.0 - _BOUND_SLACK) - 1e-6, 0.0)


@kernel
def _scan_bucket(slot, query_lat, query_lng, lat, lng, available, next_slot, found_slot, found_m, n_found,
                 best_m, bound_m, radius_m):
    """Walk one bucket's linked list from ``slot``; keep available points within ``bound_m``.

    ``best_m`` holds the k smallest distances kept so far (ascending, inf
    padded) and the bound shrinks to the k-th of them. Returns the (possibly
    grown) arrays of kept slots and distances, their count and the new bound.
    """
    k = best_m.shape[0]
    while slot >= 0:
        if available[slot]:
            d = great_circle_m(query_lat, query_lng, lat[slot], lng[slot])
            if d <= bound_m:
                if n_found == found_slot.shape[0]:
                    grown_slot = np.empty(2 * n_found, np.int64)
                    grown_m = np.empty(2 * n_found, np.float64)
                    grown_slot[:n_found] = found_slot
                    grown_m[:n_found] = found_m
                    found_slot, found_m = grown_slot, grown_m
                found_slot[n_found] = slot
                found_m[n_found] = d
                n_found += 1
                if d < best_m[k - 1]:
                    i = k - 1
                    while i > 0 and best_m[i - 1] > d:
                        best_m[i] = best_m[i - 1]
                        i -= 1
                    best_m[i] = d
                    bound_m = min(radius_m, best_m[k - 1])
        slot = next_slot[slot]
    return found_slot, found_m, n_found, bound_m


@kernel
def grid_nearest(query_lat, query_lng, radius_m, k, lat, lng, available, next_slot, head, n_lat, n_lng,
                 origin_lat, origin_lng, step_lat, step_lng):
    """The available points within ``radius_m`` of the query that are no farther than the k-th nearest of them.

    Returns ``(slots, metres)``, nearest first (equal distances: lower slot
    first). Every point tied with the k-th distance is included, so a caller
    can break ties by its own key and cut to k. Distances are great-circle
    metres (:func:`great_circle_m`), inclusive of ``radius_m``.

    Points are slots of the arrays ``lat``, ``lng`` (degrees), ``available``.
    Bucket ``b = i * n_lng + j`` of a grid of ``n_lat`` x ``n_lng`` buckets of
    ``step_lat`` x ``step_lng`` degrees from (``origin_lat``, ``origin_lng``)
    is the linked list ``head[b] -> next_slot[...] -> -1`` of the points with
    ``i = floor((lat - origin_lat) / step_lat)``, ``j`` likewise;
    ``head[n_lat * n_lng]`` lists the points outside the grid and is always
    scanned. Longitudes (query included) are frame values within 180 degrees
    of the grid's centre. Rings of buckets around the query's bucket are
    visited in order, and the search stops as soon as no unvisited bucket can
    hold a point within the current k-th distance.
    """
    found_slot = np.empty(64, np.int64)
    found_m = np.empty(64, np.float64)
    if k <= 0 or not radius_m >= 0.0:
        return found_slot[:0].copy(), found_m[:0].copy()
    best_m = np.full(k, np.inf)
    bound_m = radius_m
    found_slot, found_m, n_found, bound_m = _scan_bucket(
        head[n_lat * n_lng], query_lat, query_lng, lat, lng, available, next_slot, found_slot, found_m, 0,
        best_m, bound_m, radius_m)
    if n_lat > 0 and n_lng > 0:
        q_i = int(math.floor((query_lat - origin_lat) / step_lat))
        q_j = int(math.floor((query_lng - origin_lng) / step_lng))
        centre_lng = origin_lng + 0.5 * n_lng * step_lng
        first_ring = max(0, q_i - (n_lat - 1), -q_i, q_j - (n_lng - 1), -q_j)
        last_ring = max(abs(q_i), abs(q_i - n_lat + 1), abs(q_j), abs(q_j - n_lng + 1))
        ring = first_ring
        while ring <= last_ring:
            if ring > 0:
                # Rings below ``ring`` cover the box of buckets q +- (ring - 1): is anything outside worth a look?
                reach = _grid_lower_bound_m(
                    query_lat, query_lng,
                    origin_lat + (q_i - ring + 1) * step_lat, origin_lat + (q_i + ring) * step_lat,
                    origin_lng + (q_j - ring + 1) * step_lng, origin_lng + (q_j + ring) * step_lng, centre_lng)
                if reach > bound_m:
                    break
            for i in range(max(q_i - ring, 0), min(q_i + ring, n_lat - 1) + 1):
                step = 1 if (i == q_i - ring or i == q_i + ring) else 2 * ring
                j = q_j - ring
                while j <= q_j + ring:
                    if 0 <= j < n_lng and head[i * n_lng + j] >= 0:
                        found_slot, found_m, n_found, bound_m = _scan_bucket(
                            head[i * n_lng + j], query_lat, query_lng, lat, lng, available, next_slot,
                            found_slot, found_m, n_found, best_m, bound_m, radius_m)
                    if step == 0:
                        break
                    j += step
            ring += 1
    cut = min(radius_m, best_m[k - 1])
    n_kept = 0
    for t in range(n_found):
        if found_m[t] <= cut:
            found_slot[n_kept] = found_slot[t]
            found_m[n_kept] = found_m[t]
            n_kept += 1
    kept_slot = found_slot[:n_kept].copy()
    kept_m = found_m[:n_kept].copy()
    by_slot = np.argsort(kept_slot)
    kept_slot = kept_slot[by_slot]
    kept_m = kept_m[by_slot]
    by_distance = np.argsort(kept_m, kind="mergesort")
    return kept_slot[by_distance], kept_m[by_distance]


# Delivery-time forecast (``dispatch.eta``) -----------------------------------------------------------


@kernel
def forecast_jobs(now, sequence, driver_x, driver_y, driver_free_at, driver_shift_end, restaurant_id, restaurant_x,
                  restaurant_y, drop_x, drop_y, ready, pickup_lead, pickup_exit, dropoff_service, model,
                  metres_per_minute, lateness_weight, idle_weight, travel_weight, max_bundle_size, ready_window,
                  max_delay):
    """Virtual dispatch of pending orders, one at a time in ``sequence``; see :func:`dispatch.eta.forecast`.

    An order joins the job a driver was last given here, as its last stop, when that job is for the
    same restaurant, has room (``max_bundle_size``), is picked up no earlier than the order is ready
    and at most ``ready_window`` after its first order was, and the order's door time is at most
    ``max_delay`` later than going alone from that pickup (the bundler's rules). Otherwise it goes
    to the driver the matcher's cost prefers (lateness, idle wait, travel), which is then busy
    until it has left the order's door.

    Returns (driver, arrival at the restaurant, pickup, arrival at the door) per order; an order no
    driver can pick up before its shift ends has driver -1, arrival NaN, and the earliest pickup and
    door times its food allows. Then each driver's state once all of it is served: when (``free_at``)
    and where (``at_x``, ``at_y``: its last door, or where it started) it is free again
    (:func:`dispatch.eta_quote.availability`).
    """
    n_orders = ready.shape[0]
    n_drivers = driver_x.shape[0]
    free_at = driver_free_at.copy()
    at_x = driver_x.copy()
    at_y = driver_y.copy()
    job_restaurant = np.full(n_drivers, -1, np.int64)
    job_size = np.zeros(n_drivers, np.int64)
    job_first_ready = np.zeros(n_drivers, np.float64)
    job_arrival = np.zeros(n_drivers, np.float64)
    job_pickup = np.zeros(n_drivers, np.float64)
    chosen = np.full(n_orders, -1, np.int64)
    arrival = np.full(n_orders, np.nan)
    pickup = np.full(n_orders, np.nan)
    door = np.full(n_orders, np.nan)
    for o in sequence:
        leg = travel_minutes(model, metres_per_minute, restaurant_x[o], restaurant_y[o], drop_x[o], drop_y[o])
        joined = -1
        joined_door = np.inf
        for d in range(n_drivers):
            if (job_restaurant[d] != restaurant_id[o] or job_size[d] >= max_bundle_size
                    or ready[o] > job_pickup[d] or ready[o] - job_first_ready[d] > ready_window):
                continue
            reach = free_at[d] + travel_minutes(model, metres_per_minute, at_x[d], at_y[d], drop_x[o], drop_y[o])
            if reach - (job_pickup[d] + pickup_exit + leg) <= max_delay and reach < joined_door:
                joined, joined_door = d, reach
        if joined >= 0:
            chosen[o] = joined
            arrival[o] = job_arrival[joined]
            pickup[o] = job_pickup[joined]
            door[o] = joined_door
            job_size[joined] += 1
            free_at[joined] = joined_door + dropoff_service
            at_x[joined] = drop_x[o]
            at_y[joined] = drop_y[o]
            continue
        best = -1
        best_cost = np.inf
        best_arrival = 0.0
        for d in range(n_drivers):
            t = travel_minutes(model, metres_per_minute, at_x[d], at_y[d], restaurant_x[o], restaurant_y[o])
            reach = max(now, free_at[d]) + t + pickup_lead
            if max(reach, ready[o]) > driver_shift_end[d]:
                continue
            slack = ready[o] - reach
            cost = lateness_weight * max(0.0, -slack) + idle_weight * max(0.0, slack) + travel_weight * t
            if cost < best_cost:
                best, best_cost, best_arrival = d, cost, reach - pickup_lead
        if best < 0:
            # No courier known yet: the soonest the food could leave (the calibration widens it).
            pickup[o] = max(now + pickup_lead, ready[o])
            door[o] = pickup[o] + pickup_exit + leg
            continue
        chosen[o] = best
        arrival[o] = best_arrival
        pickup[o] = max(best_arrival + pickup_lead, ready[o])
        door[o] = pickup[o] + pickup_exit + leg
        free_at[best] = door[o] + dropoff_service
        at_x[best] = drop_x[o]
        at_y[best] = drop_y[o]
        job_restaurant[best] = restaurant_id[o]
        job_size[best] = 1
        job_first_ready[best] = ready[o]
        job_arrival[best] = best_arrival
        job_pickup[best] = pickup[o]
    return chosen, arrival, pickup, door, free_at, at_x, at_y


# Delivery-time quotes at search (``dispatch.eta_quote``) -------------------------------------------


@kernel
def quote_page(now, free_at, x, y, pool_first, pool_stop, pool_band, pool_of_row, restaurant_x, restaurant_y, prep,
               searcher_x, searcher_y, pickup_lead, pickup_exit, dropoff_service, model, metres_per_minute,
               delay_edges, offsets):
    """Calibrated door time (point, p10, p90) of an order placed at ``now`` at each restaurant ``i`` for the
    searcher's point, quoted from the couriers of its pool ``p = pool_of_row[i]`` (``pool_first[p]:pool_stop[p]``,
    sorted by ``free_at``; -1: none, NaN): the courier arriving first (``max(now, free_at) + travel``), pickup
    once it is there (``pickup_lead``) and the food ready (``now + prep``), then ``pickup_exit``, the drive and
    half the ``dropoff_service`` (see :func:`dispatch.eta_quote.quote_restaurants`); then the offsets of its
    calibration band (:meth:`dispatch.eta.EtaCalibration.promise`): the pool's load band (``pool_band``) plus the
    band of its courier delay (pickup minus ready) among ``delay_edges``, as :func:`dispatch.eta.band_of`."""
    n = restaurant_x.shape[0]
    door = np.full(n, np.nan)
    p10 = np.full(n, np.nan)
    p90 = np.full(n, np.nan)
    for i in range(n):
        p = pool_of_row[i]
        if p < 0:
            continue
        best = np.inf
        for c in range(pool_first[p], pool_stop[p]):
            start = max(now, free_at[c])
            if start >= best:
                break  # later couriers of the run are free later still
            reach = start + travel_minutes(model, metres_per_minute, x[c], y[c], restaurant_x[i], restaurant_y[i])
            if reach < best:
                best = reach
        if best == np.inf:
            continue
        ready = now + prep[i]
        pickup = max(best + pickup_lead, ready)
        raw = pickup + pickup_exit + travel_minutes(model, metres_per_minute, restaurant_x[i], restaurant_y[i],
                                                    searcher_x, searcher_y) + dropoff_service / 2
        delay = pickup - ready
        if delay != delay:
            delay = 0.0
        above = 0
        while above < delay_edges.shape[0] and delay_edges[above] <= delay:
            above += 1
        band = pool_band[p] + min(max(above, 1), delay_edges.shape[0]) - 1
        door[i] = raw + offsets[band, 1]
        p10[i] = raw + offsets[band, 0]
        p90[i] = raw + offsets[band, 2]
    return door, p10, p90
