"""The delivery-time promise (dispatch.eta): forecast kernel = twin, ordering, calibration, replay metrics;
and the matcher's tail rules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch import kernels
from dispatch.eta import DELAY_BANDS, EtaCalibration, band_of, error_summary, forecast
from dispatch.jit import load_twin
from dispatch.matcher import Drivers, MatchParams, Orders, TravelModel, match
from dispatch.mdrp import parse_instance
from dispatch.metrics import eta_metrics, held_out_calibrations, placement_residuals, tail_metrics
from dispatch.simulator import replay
from tests.dispatch.test_kernels import random_points
from tests.dispatch.test_replay import random_instance_text

twin = load_twin(kernels)
PARAMS = MatchParams(pickup_lead=2.0, pickup_exit=2.0, dropoff_service=4.0)


def random_state(seed: int, n_orders: int, n_drivers: int, model: int):
    rng = np.random.default_rng(seed)
    rx, ry = random_points(seed, 3, model)
    dx, dy = random_points(seed + 1, n_orders, model)
    px, py = random_points(seed + 2, n_drivers, model)
    ready = rng.integers(0, 40, n_orders).astype(np.float64)
    restaurant = rng.integers(0, 3, n_orders)  # few restaurants: bundles happen
    orders = Orders(restaurant_x=rx[restaurant], restaurant_y=ry[restaurant], drop_x=dx, drop_y=dy,
                    placed_at=ready - 10, ready_at=ready, restaurant_id=restaurant)
    drivers = Drivers(x=px, y=py, free_at=rng.integers(0, 30, n_drivers).astype(np.float64),
                      capacity=np.full(n_drivers, 2), shift_end=rng.integers(10, 200, n_drivers).astype(np.float64))
    speed = 320.0 if model == kernels.MDRP_EUCLIDEAN else 300.0
    travel = TravelModel(model, speed)
    return drivers, orders, travel


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 30), st.integers(0, 12),
       st.sampled_from([kernels.MDRP_EUCLIDEAN, kernels.GREAT_CIRCLE]), st.integers(1, 4))
def test_forecast_kernel_equals_twin_and_orders_its_times(seed, n_orders, n_drivers, model, max_size):
    drivers, orders, travel = random_state(seed, n_orders, n_drivers, model)
    now = 5.0
    sequence = np.lexsort((np.arange(n_orders), orders.ready_at)).astype(np.int64)
    args = (now, sequence, drivers.x, drivers.y, drivers.free_at, drivers.shift_end, orders.restaurant_id,
            orders.restaurant_x, orders.restaurant_y, orders.drop_x, orders.drop_y, orders.ready_at, 2.0, 2.0, 4.0,
            model, travel.metres_per_minute, 10.0, 1.0, 1.0, max_size, 20.0, 10.0)
    jitted, plain = kernels.forecast_jobs(*args), twin.forecast_jobs(*args)
    for a, b in zip(jitted, plain):
        assert np.array_equal(a, b, equal_nan=True)
    chosen, arrival, pickup, door, *_ = jitted
    served = chosen >= 0
    assert np.array_equal(np.isnan(arrival), ~served) and not np.isnan(door).any()
    assert (pickup >= orders.ready_at).all() and (pickup >= now + 2.0).all()
    assert (arrival[served] >= now).all() and (pickup[served] >= arrival[served] + 2.0).all()
    assert (door >= pickup + 2.0).all()
    assert (pickup[served] <= drivers.shift_end[chosen[served]]).all(), "picked up after the shift's end"
    jobs: dict[tuple[int, float], list[int]] = {}
    for o in np.flatnonzero(served):
        jobs.setdefault((int(chosen[o]), float(pickup[o])), []).append(int(o))
    for members in jobs.values():  # a bundle: one driver, one pickup, one restaurant, at most max_size
        assert len(members) <= max_size and len(set(orders.restaurant_id[members].tolist())) == 1
    # The wrapper returns the same times for the same rules.
    params = dataclasses.replace(PARAMS, max_bundle_size=max_size, bundle_max_delay=10.0, bundle_max_delay_scarce=10.0)
    result = forecast(now, drivers, orders, travel, params)
    assert np.array_equal(result.door, door) and np.array_equal(result.arrival, arrival, equal_nan=True)
    assert np.array_equal(result.courier_delay, pickup - orders.ready_at)
    pool = np.count_nonzero((drivers.free_at <= now + params.lookahead) & (drivers.shift_end >= now))
    assert result.load == n_orders / max(pool, 1)
    # The elementwise travel kernel too.
    legs = (model, travel.metres_per_minute, orders.restaurant_x, orders.restaurant_y, orders.drop_x, orders.drop_y)
    assert np.array_equal(kernels.travel_minutes_each(*legs), twin.travel_minutes_each(*legs))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.floats(0.0, 30.0))
def test_forecast_is_monotone_in_prep_time_and_queue(seed, n_orders, extra_prep):
    drivers, orders, travel = random_state(seed, n_orders, 1, kernels.MDRP_EUCLIDEAN)
    drivers = dataclasses.replace(drivers, shift_end=np.array([np.inf]))
    base = forecast(0.0, drivers, orders, travel, PARAMS)
    # The last order in ready order: a longer prep never brings its door time forward.
    last = int(np.lexsort((np.arange(n_orders), orders.ready_at))[-1])
    later = orders.ready_at.copy()
    later[last] += extra_prep
    slower = forecast(0.0, drivers, dataclasses.replace(orders, ready_at=later), travel, PARAMS)
    assert slower.door[last] >= base.door[last]
    # One driver: an extra order ahead in the queue never brings anyone's door time forward.
    ahead = Orders(*(np.concatenate([np.asarray(getattr(orders, f)), np.asarray(getattr(orders, f))[:1]])
                     for f in ("restaurant_x", "restaurant_y", "drop_x", "drop_y", "placed_at")),
                   ready_at=np.concatenate([orders.ready_at, [orders.ready_at.min() - 1]]),
                   restaurant_id=np.arange(n_orders + 1))
    queued = forecast(0.0, drivers, ahead, travel, PARAMS)
    assert (queued.door[:n_orders] >= base.door).all()


def test_calibration_orders_the_range_and_learns_offsets_per_band():
    rng = np.random.default_rng(1)
    delay = np.concatenate([np.zeros(500), np.full(500, 12.0), np.zeros(500)])
    load = np.concatenate([np.full(1000, 0.5), np.full(500, 2.0)])
    residuals = np.concatenate([rng.normal(1.0, 1.0, 500), rng.normal(5.0, 4.0, 500), rng.normal(-3.0, 1.0, 500)])
    calibration = EtaCalibration.fit(residuals, delay, load)
    offset = lambda d, l: calibration.offsets[band_of(np.array([d]), np.array([l]))[0]]
    quiet, busy, scarce = offset(0.0, 0.5), offset(12.0, 0.5), offset(0.0, 2.0)
    for p10, point, p90 in (quiet, busy, scarce):
        assert p10 <= point <= p90
    assert busy[2] - busy[0] > quiet[2] - quiet[0], "the range widens with the courier delay"
    assert abs(quiet[1] - 1.0) < 0.3 and abs(busy[1] - 5.0) < 0.8 and abs(scarce[1] + 3.0) < 0.3
    # A band with too few residuals borrows its delay band over all loads.
    assert offset(12.0, 2.0) == pytest.approx(busy)
    promise = calibration.promise(np.array([100.0, 100.0, np.nan]), np.array([0.0, 12.0, 0.0]), np.full(3, 0.5))
    assert (promise.door_p10[:2] <= promise.door[:2]).all() and (promise.door[:2] <= promise.door_p90[:2]).all()
    assert promise.door[0] == pytest.approx(100.0 + quiet[1]) and np.isnan(promise.door[2])
    assert EtaCalibration.from_json(calibration.to_json()) == calibration
    with pytest.raises(ValueError, match="bands"):
        EtaCalibration.from_json({**calibration.to_json(), "delay_bands": [0.0, 3.0]})
    last = len(DELAY_BANDS) - 1
    assert band_of(np.array([-1.0, np.nan, 0.5, 1.0, 1e9]), np.zeros(5)).tolist() == [0, 0, 0, 1, last]
    assert band_of(np.array([0.0, 1e9]), np.array([1.0, 7.0])).tolist() == [last + 1, 2 * last + 1]


def test_error_summary():
    summary = error_summary(np.array([10.0, 12.0, 20.0, np.nan]), np.array([10.0, 10.0, 10.0, 5.0]))
    assert summary["orders"] == 3 and summary["within_5"] == pytest.approx(2 / 3)
    assert summary["bias"] == pytest.approx(4.0) and summary["mae"] == pytest.approx(4.0)


def test_replay_records_estimates_at_each_moment_and_scores_them():
    solutions = []
    for day, seed in (("0", 21), ("1", 22)):
        instance = parse_instance(f"{day}random", random_instance_text(seed, 60, 6, 4))
        solutions.append(replay(instance, "slack"))
    for solution in solutions:
        inst = solution.instance
        delivered = ~np.isnan(solution.dropoff_time)
        assert delivered.any()
        # Every order got its promise at placement, from the state of the tick it was placed in.
        assert not np.isnan(solution.eta_placement[delivered]).any()
        assert (solution.eta_placement[delivered] >= inst.order_ready[delivered]).all()
        # MDRP travel is deterministic: the committed job's plan is what happens.
        assert np.array_equal(solution.eta_assignment[delivered], solution.dropoff_time[delivered])
        assert np.array_equal(solution.eta_pickup[delivered], solution.dropoff_time[delivered])
        metrics = eta_metrics(solution, EtaCalibration())
        assert metrics["pickup"]["p90_abs"] == 0.0 and metrics["assignment"]["bias"] == 0.0
        raw = metrics["placement"]
        assert raw["orders"] == delivered.sum() and 0.0 <= raw["within_5"] <= 1.0
        assert raw == metrics["placement_raw"]
    calibrations = held_out_calibrations(solutions)
    assert set(calibrations) == {"0", "1", "all"}
    # Day 0 is scored with what day 1 taught, never with itself.
    assert calibrations["0"] == EtaCalibration.fit(*placement_residuals(solutions[1]))
    calibrated = eta_metrics(solutions[0], calibrations["0"])
    assert 0.0 <= calibrated["placement_range_coverage"] <= 1.0


def test_tail_metrics_count_orders_over_the_maximum_against_their_floor():
    instance = parse_instance("0random", random_instance_text(5, 40, 2, 3))
    solution = replay(instance, "slack")
    tail = tail_metrics(solution)
    click_to_door = solution.dropoff_time - instance.order_placed
    assert tail["click_to_door_max"] == np.nanmax(click_to_door)
    over = np.nan_to_num(click_to_door) > instance.max_click_to_door
    assert tail["over_max_not_floor"] + tail["over_max_floor_too"] == over.sum()


def test_tail_rank_serves_a_long_waiting_order_before_a_later_one():
    # One courier, two orders 5 minutes from it. A was placed long ago (projected click-to-door
    # 115 min), B recently but its food has waited longer: slack alone serves B first.
    travel = TravelModel.mdrp(100.0)
    drivers = Drivers(x=np.array([0.0]), y=np.array([0.0]), free_at=np.array([0.0]), capacity=np.array([1]),
                      shift_end=np.array([1000.0]))
    orders = Orders(restaurant_x=np.array([500.0, -500.0]), restaurant_y=np.zeros(2),
                    drop_x=np.array([1500.0, -1500.0]), drop_y=np.zeros(2), placed_at=np.array([0.0, 70.0]),
                    ready_at=np.array([95.0, 80.0]), restaurant_id=np.array([0, 1]))
    assert match(100.0, drivers, orders, travel, MatchParams(tail_weight=0.0)).jobs == [(0, [1])]
    assert match(100.0, drivers, orders, travel, MatchParams()).jobs == [(0, [0])]


def test_bundling_stops_at_the_click_to_door_cap_unless_couriers_run_out():
    # Two orders of one restaurant, placed 60 min ago, ready now, doors 10 min east and west: alone
    # each arrives at 70 min; as the second stop of a bundle one would arrive at 90 min.
    travel = TravelModel.mdrp(100.0)
    orders = Orders(restaurant_x=np.zeros(2), restaurant_y=np.zeros(2), drop_x=np.array([1000.0, -1000.0]),
                    drop_y=np.zeros(2), placed_at=np.zeros(2), ready_at=np.full(2, 60.0),
                    restaurant_id=np.zeros(2, np.int64))

    def drivers(n: int) -> Drivers:
        return Drivers(x=np.zeros(n), y=np.zeros(n), free_at=np.zeros(n), capacity=np.full(n, 4),
                       shift_end=np.full(n, 1000.0))

    # Two couriers for two orders (scarce, so the 35-min bundling bound, but not out): no bundle past 75 min.
    assert sorted(job for _, job in match(60.0, drivers(2), orders, travel, MatchParams()).jobs) == [[0], [1]]
    assert [sorted(job) for _, job in match(60.0, drivers(2), orders, travel,
                                            MatchParams(bundle_click_to_door_cap=np.inf)).jobs] == [[0, 1]]
    # One courier for two orders: bundling is what serves both, cap or not.
    assert [sorted(job) for _, job in match(60.0, drivers(1), orders, travel, MatchParams()).jobs] == [[0, 1]]
