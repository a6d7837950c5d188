"""Delivery-time quotes at search (dispatch.eta_quote): couriers' availability after the virtual dispatch, and
per-restaurant quotes, with numbers checkable by hand; the kernel's final driver states equal its twin's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch import kernels
from dispatch.cell import CellCore, LiveOrder
from dispatch.eta import DELAY_BANDS, EtaCalibration, band_of, virtual_dispatch
from dispatch.eta_quote import CourierAvailability, QuoteBoard, availability, quote_restaurants
from dispatch.jit import load_twin
from dispatch.matcher import Drivers, MatchParams, Orders, TravelModel
from tests.dispatch.test_eta import random_state
from tests.dispatch.test_kernels import random_points

twin = load_twin(kernels)
# MDRP metres: 100 m a minute, so 1,000 m is 10 minutes of driving (ceil of metres / speed).
TRAVEL = TravelModel.mdrp(100.0)
PARAMS = MatchParams(pickup_lead=2.0, pickup_exit=1.0, dropoff_service=4.0)


def drivers(x, y, free_at, shift_end=None) -> Drivers:
    n = len(x)
    shift_end = np.full(n, np.inf) if shift_end is None else np.asarray(shift_end, float)
    return Drivers(x=np.asarray(x, float), y=np.asarray(y, float), free_at=np.asarray(free_at, float),
                   capacity=np.full(n, 2), shift_end=shift_end)


def orders(restaurant, drop, ready, placed=None) -> Orders:
    n = len(ready)
    return Orders(restaurant_x=np.array([p[0] for p in restaurant], float),
                  restaurant_y=np.array([p[1] for p in restaurant], float),
                  drop_x=np.array([p[0] for p in drop], float), drop_y=np.array([p[1] for p in drop], float),
                  placed_at=np.asarray(ready, float) - 10 if placed is None else np.asarray(placed, float),
                  ready_at=np.asarray(ready, float), restaurant_id=np.arange(n))


NO_ORDERS = orders([], [], [])


def test_one_idle_courier_at_a_known_distance_gives_known_minutes():
    # Courier at the origin, free now (t=100); restaurant 1,000 m east (10 min), searcher 500 m further (5 min).
    basis = availability(100.0, drivers([0.0], [0.0], [100.0]), NO_ORDERS, TRAVEL, PARAMS)
    assert basis.free_at.tolist() == [100.0] and basis.x.tolist() == [0.0] and basis.at == 100.0
    quote = quote_restaurants(100.0, basis, [1000.0], [0.0], [5.0], 1500.0, 0.0, TRAVEL, PARAMS)
    # arrival 110, pickup max(110 + 2, 105) = 112, door 112 + 1 + 5 + 4 / 2 = 120
    assert quote.door.tolist() == [120.0] and quote.door_p10.tolist() == [120.0] and quote.door_p90.tolist() == [120.0]
    # A long prep: the food decides, not the courier (pickup at 100 + 30).
    quote = quote_restaurants(100.0, basis, [1000.0], [0.0], [30.0], 1500.0, 0.0, TRAVEL, PARAMS)
    assert quote.door.tolist() == [130.0 + 1 + 5 + 2]


def test_a_pending_order_delays_the_courier_and_moves_it():
    # The courier first serves an order ready at 100 at (0, 0) for a door 2,000 m north: picked up at
    # max(100 + 0 + 2, 100) = 102, at the door at 102 + 1 + 20 = 123, free at 123 + 4 = 127 there.
    basis = availability(100.0, drivers([0.0], [0.0], [100.0]), orders([(0.0, 0.0)], [(0.0, 2000.0)], [100.0]),
                         TRAVEL, PARAMS)
    assert basis.free_at.tolist() == [127.0] and (basis.x[0], basis.y[0]) == (0.0, 2000.0)
    assert basis.load == 1.0
    # From there to a restaurant at (0, 1000): 10 min, arrival 137, pickup 139, door 139 + 1 + 0 + 2 = 142.
    quote = quote_restaurants(100.0, basis, [0.0], [1000.0], [5.0], 0.0, 1000.0, TRAVEL, PARAMS)
    assert quote.door.tolist() == [142.0]


def test_the_nearest_courier_in_time_wins_and_the_calibration_applies():
    # Two couriers: one free now 3,000 m away (30 min), one free in 5 min 500 m away (5 min): the second.
    basis = availability(0.0, drivers([3000.0, 500.0], [0.0, 0.0], [0.0, 5.0]), NO_ORDERS, TRAVEL, PARAMS)
    assert basis.free_at.tolist() == [0.0, 5.0]
    calibration = EtaCalibration(tuple((-2.0, 1.0, 6.0) for _ in EtaCalibration().offsets))
    quote = quote_restaurants(0.0, basis, [0.0], [0.0], [1.0], 0.0, 0.0, TRAVEL, PARAMS, calibration)
    # arrival 10, pickup 12, door 12 + 1 + 0 + 2 = 15; calibrated 16 (13 to 21)
    assert (quote.door_p10[0], quote.door[0], quote.door_p90[0]) == (13.0, 16.0, 21.0)


def test_no_courier_quotes_nothing_and_keep_caps_the_earliest_free():
    empty = availability(0.0, drivers([], [], []), NO_ORDERS, TRAVEL, PARAMS)
    assert len(empty) == 0
    quote = quote_restaurants(0.0, empty, [0.0, 1.0], [0.0, 1.0], [5.0, 5.0], 0.0, 0.0, TRAVEL, PARAMS)
    assert np.isnan(quote.door).all() and np.isnan(quote.door_p10).all() and np.isnan(quote.door_p90).all()
    many = availability(0.0, drivers(np.arange(10.0), np.zeros(10), np.arange(10.0)[::-1]), NO_ORDERS, TRAVEL,
                        PARAMS, keep=3)
    assert many.free_at.tolist() == [0.0, 1.0, 2.0] and many.x.tolist() == [9.0, 8.0, 7.0]
    # A courier whose shift is over before it is free is no courier; one free before now is free now.
    ended = availability(10.0, drivers([0.0, 0.0], [0.0, 0.0], [2.0, 30.0], shift_end=[50.0, 20.0]), NO_ORDERS,
                         TRAVEL, PARAMS)
    assert ended.free_at.tolist() == [10.0]


def test_availability_round_trips_as_lists_and_merges():
    basis = availability(0.0, drivers([0.0, 1.0], [0.0, 1.0], [0.0, 3.0]), NO_ORDERS, TRAVEL, PARAMS)
    again = CourierAvailability.from_lists(basis.to_lists())
    assert again.to_lists() == basis.to_lists()
    other = CourierAvailability(np.array([7.0]), np.array([5.0]), np.array([5.0]), 2.5, -1.0)
    both = CourierAvailability.merged([basis, other])
    assert both.free_at.tolist() == [0.0, 3.0, 7.0] and both.load == 2.5 and both.at == -1.0
    assert len(CourierAvailability.merged([])) == 0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 30), st.integers(0, 12),
       st.sampled_from([kernels.MDRP_EUCLIDEAN, kernels.GREAT_CIRCLE]))
def test_final_driver_states_equal_the_twins_and_follow_the_orders(seed, n_orders, n_drivers, model):
    drivers_, orders_, travel = random_state(seed, n_orders, n_drivers, model)
    now = 5.0
    sequence = np.lexsort((np.arange(n_orders), orders_.ready_at)).astype(np.int64)
    args = (now, sequence, drivers_.x, drivers_.y, drivers_.free_at, drivers_.shift_end, orders_.restaurant_id,
            orders_.restaurant_x, orders_.restaurant_y, orders_.drop_x, orders_.drop_y, orders_.ready_at, 2.0, 2.0,
            4.0, model, travel.metres_per_minute, 10.0, 1.0, 1.0, 2, 20.0, 10.0)
    jitted, plain = kernels.forecast_jobs(*args), twin.forecast_jobs(*args)
    assert len(jitted) == len(plain) == 7
    for a, b in zip(jitted, plain):
        assert np.array_equal(a, b, equal_nan=True)
    chosen, _, _, door, free_at, at_x, at_y = jitted
    for d in range(n_drivers):
        mine = np.flatnonzero(chosen == d)
        if len(mine) == 0:  # untouched
            assert (free_at[d], at_x[d], at_y[d]) == (drivers_.free_at[d], drivers_.x[d], drivers_.y[d])
        else:  # free at its last door, after the drop-off service
            last = mine[np.argmax(door[mine])]
            assert free_at[d] == pytest.approx(door[mine].max() + 4.0)
            assert (at_x[d], at_y[d]) == (orders_.drop_x[last], orders_.drop_y[last])
    # availability() is that state, earliest first, never before now.
    params = MatchParams(pickup_lead=2.0, pickup_exit=2.0, dropoff_service=4.0)
    basis = availability(now, drivers_, orders_, travel, params)
    *_, (*_, free_at2, _, _) = virtual_dispatch(now, drivers_, orders_, travel, params)
    serving = np.maximum(free_at2, now) <= drivers_.shift_end
    assert sorted(basis.free_at.tolist()) == basis.free_at.tolist()
    assert basis.free_at.tolist() == sorted(np.maximum(free_at2, now)[serving].tolist())


def test_a_cell_quotes_from_its_idle_and_busy_couriers():
    cell = CellCore("c")
    now = 6_000.0  # unix seconds: minute 100
    cell.driver_seen("d1", 0.0, 0.0, now)
    basis = cell.courier_availability(now)
    assert basis.free_at.tolist() == [100.0] and basis.at == 100.0 and basis.load == 0.0
    cell.add_order(LiveOrder(id=1, restaurant_id=7, restaurant_lat=0.0, restaurant_lng=0.0, dropoff_lat=0.01,
                             dropoff_lng=0.0, placed_at=now, ready_at=now + 300.0))
    busy = cell.courier_availability(now)
    # The courier serves the pending order first (ready at minute 105), then is free at its door.
    assert busy.free_at[0] > 105.0 and busy.y[0] == pytest.approx(0.01) and busy.load == 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 12), st.integers(0, 40),
       st.sampled_from([kernels.MDRP_EUCLIDEAN, kernels.GREAT_CIRCLE]))
def test_quote_page_equals_its_twin_and_the_plain_rules_calibrated(seed, n_rows, n_couriers, model):
    rng = np.random.default_rng(seed)
    x, y = random_points(seed, n_couriers, model)
    rx, ry = random_points(seed + 1, n_rows, model)
    sx, sy = random_points(seed + 2, 1, model)
    cut = int(rng.integers(0, n_couriers + 1))
    free_at = np.concatenate([np.sort(rng.uniform(0.0, 30.0, cut)), np.sort(rng.uniform(0.0, 30.0, n_couriers - cut))])
    prep = rng.uniform(0.0, 40.0, n_rows)
    first, stop = np.array([0, cut], np.int64), np.array([cut, n_couriers], np.int64)  # two pools
    loads = rng.uniform(0.0, 3.0, 2)
    pool_band = band_of(np.zeros(2), loads).astype(np.int64)
    pool_of_row = rng.integers(-1, 2, n_rows).astype(np.int64)
    offsets = np.sort(rng.normal(0.0, 5.0, (len(EtaCalibration().offsets), 3)), axis=1)
    calibration = EtaCalibration(tuple(tuple(o) for o in offsets.tolist()))
    speed = 320.0 if model == kernels.MDRP_EUCLIDEAN else 300.0
    args = (10.0, free_at, x, y, first, stop, pool_band, pool_of_row, rx, ry, prep, sx[0], sy[0], 2.0, 1.0, 4.0,
            model, speed, np.asarray(DELAY_BANDS), offsets)
    jitted, plain = kernels.quote_page(*args), twin.quote_page(*args)
    for a, b in zip(jitted, plain):
        assert np.array_equal(a, b, equal_nan=True)
    travel = lambda *p: kernels.travel_minutes(model, speed, *p)  # noqa: E731
    for i, p in enumerate(pool_of_row):
        run = range(first[p], stop[p]) if p >= 0 else range(0)
        arrival = min((max(10.0, free_at[c]) + travel(x[c], y[c], rx[i], ry[i]) for c in run), default=np.nan)
        pickup = max(arrival + 2.0, 10.0 + prep[i])
        raw = pickup + 1.0 + travel(rx[i], ry[i], sx[0], sy[0]) + 2.0
        expected = calibration.promise(np.array([raw]), np.array([pickup - 10.0 - prep[i]]), loads[[max(p, 0)]])
        for got, want in zip((jitted[0][i], jitted[1][i], jitted[2][i]),
                             (expected.door[0], expected.door_p10[0], expected.door_p90[0])):
            assert got == pytest.approx(want, nan_ok=True)


def test_a_board_quotes_each_row_from_its_cells_couriers_or_its_neighbours():
    import h3

    home = h3.latlng_to_cell(41.88, -87.63, 6)
    neighbour = next(c for c in h3.grid_disk(home, 1) if c != home)
    far = h3.latlng_to_cell(42.88, -87.63, 6)
    staffed = CourierAvailability(np.array([20.0]), np.array([0.0]), np.array([0.0]), 3.0, 0.0)
    board = QuoteBoard({neighbour: staffed, home: availability(0.0, drivers([], [], []), NO_ORDERS, TRAVEL, PARAMS),
                        "not-a-cell": availability(0.0, drivers([0.0], [0.0], [0.0]), NO_ORDERS, TRAVEL, PARAMS)},
                       TRAVEL, PARAMS)
    assert board.pool_of(far) == -1 and board.pool_of(home) >= 0  # home has no courier: its neighbour's
    rows = [board.pool_of(home), board.pool_of(far), board.pool_of("not-a-cell")]
    quote = board.quote(0.0, rows, [0.0] * 3, [0.0] * 3, [1.0] * 3, 0.0, 0.0)
    # Courier at the restaurant: pickup max(20 + 2, 1) = 22 (free at 20) or 2 (free now); door + 1 + 0 + 2.
    assert quote.door[0] == 25.0 and np.isnan(quote.door[1]) and quote.door[2] == 5.0
    assert board.pool_at[rows[0]] == 0.0
