"""Numba kernels of the matcher; their plain-Python twins come from :func:`dispatch.jit.load_twin`.

All times are float64 minutes, all indices int64, and every kernel is
deterministic (ties break by lower index), so a kernel and its twin return
identical arrays. Positions are ``(x, y)``: metres for the MDRP model,
``(lng, lat)`` degrees for the great-circle model.
"""

from __future__ import annotations

import math

import numpy as np

from dispatch.geo import haversine_m
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
    # About two points per cell; degenerate extents collapse to one cell.
    cell = math.sqrt(max(width * height, 1.0) * 2.0 / n_points)
    cell = max(cell, width / 1024.0, height / 1024.0, 1e-9)
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
        ring = 0
        while ring <= last_ring:
            for row in range(max(q_row - ring, 0), min(q_row + ring, n_rows - 1) + 1):
                on_edge_row = row == q_row - ring or row == q_row + ring
                step = 1 if on_edge_row else 2 * ring
                col = q_col - ring
                while col <= q_col + ring:
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
def bundle_orders(by_restaurant, restaurant_id, restaurant_x, restaurant_y, drop_x, drop_y, ready,
                  model, metres_per_minute, dropoff_service, ready_window, max_delay, max_size):
    """Bundle orders of the same restaurant; see :func:`dispatch.matcher.form_bundles`.

    ``by_restaurant`` lists the order indices sorted by (restaurant, ready, index).
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
