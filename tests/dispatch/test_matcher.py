"""Properties of the matcher API on random live-like (great-circle) situations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.matcher import POLICIES, Drivers, MatchParams, Orders, TravelModel, form_bundles, match

TRAVEL = TravelModel.great_circle(speed_kmh=20.0)


def random_situation(seed: int, n_orders: int, n_drivers: int, n_restaurants: int):
    rng = np.random.default_rng(seed)
    rest_lng, rest_lat = rng.uniform(-74.02, -73.95, n_restaurants), rng.uniform(40.70, 40.77, n_restaurants)
    restaurant = rng.integers(0, n_restaurants, n_orders)
    placed = rng.integers(0, 20, n_orders).astype(np.float64)
    orders = Orders(
        restaurant_x=rest_lng[restaurant], restaurant_y=rest_lat[restaurant],
        drop_x=rng.uniform(-74.02, -73.95, n_orders), drop_y=rng.uniform(40.70, 40.77, n_orders),
        placed_at=placed, ready_at=placed + rng.integers(0, 30, n_orders), restaurant_id=restaurant,
    )
    drivers = Drivers(
        x=rng.uniform(-74.02, -73.95, n_drivers), y=rng.uniform(40.70, 40.77, n_drivers),
        free_at=rng.integers(0, 30, n_drivers).astype(np.float64), capacity=rng.integers(1, 4, n_drivers),
        shift_end=rng.integers(20, 200, n_drivers).astype(np.float64),
    )
    return orders, drivers


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 40), st.integers(0, 30), st.integers(1, 8),
       st.sampled_from(POLICIES))
def test_match_commits_feasible_disjoint_jobs(seed, n_orders, n_drivers, n_restaurants, policy):
    orders, drivers = random_situation(seed, n_orders, n_drivers, n_restaurants)
    now = 20.0
    params = MatchParams(pickup_lead=2.0, dropoff_service=4.0)
    result = match(now, drivers, orders, TRAVEL, params, policy)
    seen_orders, seen_drivers = set(), set()
    for driver, job in result.jobs:
        assert driver not in seen_drivers, "driver got two jobs in one tick"
        assert not seen_orders.intersection(job), "order assigned twice"
        seen_drivers.add(driver)
        seen_orders.update(job)
        assert drivers.free_at[driver] <= now, "busy driver was diverted"
        assert len(job) <= drivers.capacity[driver]
        assert len({int(orders.restaurant_id[o]) for o in job}) == 1
        restaurant = job[0]
        arrival = now + TRAVEL.minutes(drivers.x[driver], drivers.y[driver],
                                       orders.restaurant_x[restaurant], orders.restaurant_y[restaurant]) + 2.0
        assert max(arrival, max(orders.ready_at[o] for o in job)) <= drivers.shift_end[driver]
        assert all(result.order_driver[o] == driver for o in job)
    assert set(np.flatnonzero(result.order_driver >= 0).tolist()) == seen_orders
    assert not (result.order_held & (result.order_driver >= 0)).any()
    if policy == "nearest":
        assert all(len(job) == 1 for _, job in result.jobs)
    # Deterministic.
    again = match(now, drivers, orders, TRAVEL, params, policy)
    assert again.jobs == result.jobs


def test_slack_policy_waits_when_drivers_would_idle_and_commits_late_orders():
    # One driver next to the restaurant; order A ready in 30 min, order B already late.
    drivers = Drivers(x=np.array([-74.0]), y=np.array([40.7]), free_at=np.array([0.0]),
                      capacity=np.array([1]), shift_end=np.array([500.0]))
    orders = Orders(restaurant_x=np.array([-74.0, -74.001]), restaurant_y=np.array([40.7, 40.7]),
                    drop_x=np.array([-74.01, -74.01]), drop_y=np.array([40.71, 40.71]),
                    placed_at=np.array([0.0, 0.0]), ready_at=np.array([40.0, 5.0]),
                    restaurant_id=np.array([0, 1]))
    result = match(10.0, drivers, orders, TRAVEL, MatchParams(), "slack")
    assert result.jobs == [(0, [1])]
    assert result.order_urgency[0] > MatchParams().commit_window
    only_early = Orders(*(np.asarray(getattr(orders, f)[:1]) for f in orders.__dataclass_fields__))
    assert match(10.0, drivers, only_early, TRAVEL, MatchParams(), "slack").jobs == []
    assert match(10.0, drivers, only_early, TRAVEL, MatchParams(), "nearest").jobs == [(0, [0])]


def test_busy_driver_is_held_not_diverted():
    drivers = Drivers(x=np.array([-74.0, -73.90]), y=np.array([40.7, 40.8]), free_at=np.array([12.0, 0.0]),
                      capacity=np.array([1, 1]), shift_end=np.array([500.0, 500.0]))
    orders = Orders(restaurant_x=np.array([-74.0]), restaurant_y=np.array([40.7]), drop_x=np.array([-74.01]),
                    drop_y=np.array([40.71]), placed_at=np.array([0.0]), ready_at=np.array([12.0]),
                    restaurant_id=np.array([0]))
    result = match(10.0, drivers, orders, TRAVEL, MatchParams(), "slack")
    assert result.jobs == [] and result.order_held[0]


def test_bundles_same_restaurant_within_delay():
    metres = TravelModel.mdrp(100.0)
    orders = Orders(restaurant_x=np.zeros(3), restaurant_y=np.zeros(3),
                    drop_x=np.array([1000.0, 1100.0, -5000.0]), drop_y=np.zeros(3),
                    placed_at=np.zeros(3), ready_at=np.array([10.0, 11.0, 10.0]), restaurant_id=np.zeros(3, int))
    jobs = form_bundles(orders, metres, MatchParams(dropoff_service=4.0), max_delay=5.0, max_size=4)
    assert sorted(map(sorted, jobs)) == [[0, 1], [2]]
    assert sorted(form_bundles(orders, metres, MatchParams(), 5.0, max_size=1)) == [[0], [1], [2]]


def test_unknown_policy_rejected():
    orders, drivers = random_situation(0, 2, 2, 1)
    with pytest.raises(ValueError):
        match(0.0, drivers, orders, TRAVEL, MatchParams(), "random")


def test_bundles_never_exceed_the_largest_capacity_so_late_orders_are_served():
    drivers = Drivers(x=np.array([-74.0]), y=np.array([40.7]), free_at=np.array([0.0]),
                      capacity=np.array([1]), shift_end=np.array([500.0]))
    orders = Orders(restaurant_x=np.full(2, -74.0), restaurant_y=np.full(2, 40.7), drop_x=np.full(2, -74.01),
                    drop_y=np.full(2, 40.71), placed_at=np.zeros(2), ready_at=np.array([1.0, 2.0]),
                    restaurant_id=np.zeros(2, int))
    assert match(30.0, drivers, orders, TRAVEL, MatchParams(), "slack").jobs == [(0, [0])]  # most urgent first
    # Min-cost matching serves the cheaper (less late) order instead, but serves one.
    assert match(30.0, drivers, orders, TRAVEL, MatchParams(), "optimal").jobs == [(0, [1])]
