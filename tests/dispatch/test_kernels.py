"""Every numba kernel equals its plain-Python twin exactly, on random inputs."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch import kernels
from dispatch.geo import haversine_m, haversine_m_array
from dispatch.jit import load_twin

twin = load_twin(kernels)
SETTINGS = settings(max_examples=25, deadline=None)


def random_points(seed: int, n: int, model: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model == kernels.MDRP_EUCLIDEAN:
        return rng.integers(0, 20_000, n).astype(np.float64), rng.integers(0, 20_000, n).astype(np.float64)
    return rng.uniform(-74.05, -73.90, n), rng.uniform(40.65, 40.80, n)


def test_twin_is_plain_python():
    assert not hasattr(twin.nearest_candidates, "py_func")
    assert hasattr(kernels.nearest_candidates, "py_func")


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from([kernels.MDRP_EUCLIDEAN, kernels.GREAT_CIRCLE]))
def test_travel_minutes_equals_twin(seed, model):
    x, y = random_points(seed, 8, model)
    for i in range(4):
        args = (model, 314.0, x[i], y[i], x[i + 4], y[i + 4])
        assert kernels.travel_minutes(*args) == twin.travel_minutes(*args)


def test_great_circle_agrees_with_vectorised_haversine():
    x, y = random_points(7, 40, kernels.GREAT_CIRCLE)
    scalar = np.array([haversine_m(y[i], x[i], y[-1], x[-1]) for i in range(40)])
    assert np.allclose(scalar, haversine_m_array(y, x, y[-1], x[-1]), rtol=1e-12, atol=1e-6)
    assert math.isclose(kernels.great_circle_m(40.0, -74.0, 41.0, -74.0), 111_195.0, rel_tol=1e-3)


@SETTINGS
@given(
    st.integers(0, 2**32 - 1),
    st.integers(0, 40),
    st.integers(0, 200),
    st.integers(1, 12),
    st.sampled_from([math.inf, 3_000.0]),
)
def test_nearest_candidates_exact_and_equal_to_twin(seed, n_queries, n_points, k, radius):
    qx, qy = random_points(seed, n_queries, kernels.MDRP_EUCLIDEAN)
    px, py = random_points(seed + 1, n_points, kernels.MDRP_EUCLIDEAN)
    assert_exact_nearest(qx, qy, px, py, k, radius)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 12), st.sampled_from([math.inf, 3_000.0]))
def test_nearest_candidates_of_a_few_points_along_a_line(seed, n_points, k, radius):
    """A few drivers strung along a road (almost no area, a long side), queries near and far: exact.

    Such points once got a grid of a thousand mostly empty cells per row, searched ring by ring when
    fewer than k points exist (tens of ms a query; tests/test_cell.py's random days took minutes)."""
    rng = np.random.default_rng(seed)
    px = rng.uniform(0, 4_000, n_points)
    py = 100.0 + rng.uniform(0, 1e-3, n_points)
    qx = np.concatenate([rng.uniform(-2_000, 6_000, 8), [-50_000.0, 50_000.0]])
    qy = np.concatenate([rng.uniform(-2_000, 2_000, 8), [100.0, -9_000.0]])
    assert_exact_nearest(qx, qy, px, py, k, radius)


def assert_exact_nearest(qx, qy, px, py, k, radius):
    """The kernel and its twin agree, and find the k nearest points within ``radius`` (brute force)."""
    n_queries = len(qx)
    jitted = kernels.nearest_candidates(qx, qy, px, py, 1.0, 1.0, k, radius)
    plain = twin.nearest_candidates(qx, qy, px, py, 1.0, 1.0, k, radius)
    assert np.array_equal(jitted, plain)
    # Same distances as brute force (the index may differ only between equidistant points).
    for q in range(n_queries):
        d2 = (px - qx[q]) ** 2 + (py - qy[q]) ** 2
        expected = np.sort(d2[d2 <= radius * radius])[:k]
        got = jitted[q][jitted[q] >= 0]
        assert len(set(got.tolist())) == len(got)
        assert np.array_equal(np.sort(d2[got]), expected)


def random_matching_inputs(seed: int, n_jobs: int, n_drivers: int, model: int, k: int):
    rng = np.random.default_rng(seed)
    jx, jy = random_points(seed, n_jobs, model)
    dx, dy = random_points(seed + 1, n_drivers, model)
    free_at = rng.integers(0, 30, n_drivers).astype(np.float64)
    shift_end = rng.integers(20, 120, n_drivers).astype(np.float64)
    ready = rng.integers(0, 60, n_jobs).astype(np.float64)
    scale = (1.0, 1.0) if model == kernels.MDRP_EUCLIDEAN else (84_000.0, 111_000.0)
    candidates = kernels.nearest_candidates(jx, jy, dx, dy, *scale, min(k, n_drivers), math.inf)
    return jx, jy, dx, dy, free_at, shift_end, ready, candidates, rng


@SETTINGS
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 30),
    st.integers(1, 40),
    st.sampled_from([kernels.MDRP_EUCLIDEAN, kernels.GREAT_CIRCLE]),
    st.integers(1, 8),
)
def test_slack_and_assignment_equal_twins_and_respect_capacity(seed, n_jobs, n_drivers, model, k):
    jx, jy, dx, dy, free_at, shift_end, ready, candidates, rng = random_matching_inputs(
        seed, n_jobs, n_drivers, model, k)
    speed = 314.0 if model == kernels.MDRP_EUCLIDEAN else 400.0
    args = (10.0, candidates, dx, dy, free_at, shift_end, jx, jy, ready, 2.0, model, speed, 10.0, 1.0, 1.0)
    jitted = kernels.slack_and_cost(*args)
    plain = twin.slack_and_cost(*args)
    for a, b in zip(jitted, plain):
        assert np.array_equal(a, b)
    kept, travel, slack, cost, urgency = jitted
    for j in range(n_jobs):
        for c in range(kept.shape[1]):
            d = kept[j, c]
            if d >= 0:
                assert max(max(10.0, free_at[d]) + travel[j, c] + 2.0, ready[j]) <= shift_end[d]
                assert slack[j, c] == ready[j] - (max(10.0, free_at[d]) + travel[j, c] + 2.0)
        valid = slack[j][kept[j] >= 0]
        assert urgency[j] == (valid.max() if len(valid) else np.inf)

    job_size = rng.integers(1, 4, n_jobs)
    capacity = rng.integers(1, 4, n_drivers)
    eligible = urgency <= 5.0
    a = kernels.assign_in_priority_order(urgency, eligible, kept, cost, job_size, capacity)
    b = twin.assign_in_priority_order(urgency, eligible, kept, cost, job_size, capacity)
    assert np.array_equal(a, b)
    drivers = a[a >= 0]
    assert len(np.unique(drivers)) == len(drivers), "a driver took two jobs"
    for j in np.flatnonzero(a >= 0):
        assert eligible[j] and a[j] in kept[j] and capacity[a[j]] >= job_size[j]


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(1, 40), st.integers(1, 8))
def test_exchanges_equal_twin_keep_served_jobs_and_never_raise_cost(seed, n_jobs, n_drivers, k):
    jx, jy, dx, dy, free_at, shift_end, ready, candidates, rng = random_matching_inputs(
        seed, n_jobs, n_drivers, kernels.MDRP_EUCLIDEAN, k)
    kept, _, _, cost, urgency = kernels.slack_and_cost(
        0.0, candidates, dx, dy, free_at, shift_end, jx, jy, ready, 2.0, kernels.MDRP_EUCLIDEAN, 314.0, 10.0, 1.0, 1.0)
    job_size = rng.integers(1, 3, n_jobs)
    capacity = rng.integers(1, 3, n_drivers)
    greedy = kernels.assign_in_priority_order(urgency, urgency < np.inf, kept, cost, job_size, capacity)
    improved = kernels.improve_by_exchanges(greedy, kept, cost, job_size, capacity, 10)
    assert np.array_equal(improved, twin.improve_by_exchanges(greedy, kept, cost, job_size, capacity, 10))
    assert np.array_equal(improved >= 0, greedy >= 0), "exchanges changed which jobs are served"
    drivers = improved[improved >= 0]
    assert len(np.unique(drivers)) == len(drivers)
    total = lambda assignment: sum(kernels.pair_cost(kept, cost, j, assignment[j]) for j in np.flatnonzero(assignment >= 0))
    assert total(improved) <= total(greedy)
    for j in np.flatnonzero(improved >= 0):
        assert improved[j] in kept[j] and capacity[improved[j]] >= job_size[j]


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(0, 40), st.integers(1, 5), st.integers(1, 5),
       st.sampled_from([kernels.MDRP_EUCLIDEAN, kernels.GREAT_CIRCLE]), st.sampled_from([0.0, 5.0, 30.0]),
       st.sampled_from([-np.inf, 15.0]), st.sampled_from([20.0, np.inf]))
def test_bundle_orders_equals_twin_and_respects_its_limits(seed, n, n_restaurants, max_size, model, max_delay, now,
                                                           cap):
    rng = np.random.default_rng(seed)
    rx, ry = random_points(seed, n_restaurants, model)
    dx, dy = random_points(seed + 1, n, model)
    restaurant = rng.integers(0, n_restaurants, n)
    ready = rng.integers(0, 30, n).astype(np.float64)
    placed = ready - rng.integers(0, 20, n)
    order = np.lexsort((np.arange(n), ready, restaurant)).astype(np.int64)
    speed = 314.0 if model == kernels.MDRP_EUCLIDEAN else 300.0
    args = (order, restaurant.astype(np.int64), rx[restaurant], ry[restaurant], dx, dy, ready, placed,
            model, speed, 4.0, 10.0, max_delay, max_size, now, cap)
    jobs, lengths = kernels.bundle_orders(*args)
    plain_jobs, plain_lengths = twin.bundle_orders(*args)
    assert np.array_equal(jobs, plain_jobs) and np.array_equal(lengths, plain_lengths)
    members = [row[:length].tolist() for row, length in zip(jobs, lengths)]
    assert sorted(o for job in members for o in job) == list(range(n))
    leg = lambda a, b: kernels.drop_leg_minutes(model, speed, a, b, rx[restaurant], ry[restaurant], dx, dy, 4.0)
    for job in members:
        assert 1 <= len(job) <= max_size and len({int(restaurant[o]) for o in job}) == 1
        assert ready[job].max() - ready[job].min() <= 10.0
        pickup, elapsed, previous = ready[job].max(), 0.0, -1
        for stop in job:
            elapsed += leg(previous, stop)
            previous = stop
            if len(job) > 1:
                assert pickup + elapsed - (ready[stop] + leg(-1, stop)) <= max_delay
                door = max(pickup, now) + elapsed
                assert door - placed[stop] <= cap or door <= max(ready[stop], now) + leg(-1, stop), \
                    "bundling pushed an order past the click-to-door cap"


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["nearest", "slack", "optimal"]))
def test_match_decides_alike_on_the_kernels_and_their_twins(seed, policy):
    """The whole :func:`match` call (what ``bench.matcher_speed`` times) is the same on either implementation."""
    from bench.matcher_speed import city, same_decision
    from dispatch.matcher import MatchParams, TravelModel, match

    now, drivers, orders = city(seed, 60, 150, n_restaurants=20)
    travel, params = TravelModel.great_circle(speed_kmh=20.0), MatchParams(pickup_lead=2.0)
    jitted = match(now, drivers, orders, travel, params, policy, kernels)
    plain = match(now, drivers, orders, travel, params, policy, twin)
    assert jitted.jobs, "the random city should commit some jobs"
    assert same_decision(jitted, plain)
