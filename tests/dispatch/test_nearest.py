"""Nearest available drivers of a cell: the grid kernel equals its twin and brute force, under any updates."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch import kernels
from dispatch.cell import CellCore, DriverIndex, LiveDriver, LiveOrder
from dispatch.geo import haversine_m
from dispatch.jit import load_twin
from dispatch.lifecycle import DriverStatus

twin = load_twin(kernels)
SETTINGS = settings(max_examples=25, deadline=None)
LAT, LNG = 41.88, -87.63
STATUSES = list(DriverStatus)


def brute_force(drivers, lat: float, lng: float, radius_m: float, k: int) -> list[tuple[float, str]]:
    """The reference answer: every idle driver's distance, filtered and sorted by (distance, id)."""
    hits = []
    for driver in drivers:
        if driver.status is DriverStatus.IDLE:
            metres = haversine_m(lat, lng, driver.lat, driver.lng)
            if metres <= radius_m:
                hits.append((metres, driver.id))
    return sorted(hits)[:k]


def answer(hits) -> list[tuple[float, str]]:
    return [(hit.distance_m, hit.driver.id) for hit in hits]


def random_position(rng: np.random.Generator, spread_deg: float) -> tuple[float, float]:
    """Mostly clustered points, some on a handful of shared spots (exact ties), some far out."""
    roll = rng.random()
    if roll < 0.15:
        spot = rng.integers(0, 4)
        return LAT + 0.001 * spot, LNG - 0.001 * spot
    if roll < 0.2:
        return LAT + rng.uniform(-1.0, 1.0), LNG + rng.uniform(-1.0, 1.0)
    return LAT + rng.normal(0.0, spread_deg), LNG + rng.normal(0.0, spread_deg * 1.3)


def random_index(seed: int, n: int, grid: dict) -> tuple[DriverIndex, list[LiveDriver]]:
    """An index after random adds, moves, status changes and removals; returns it and its live drivers."""
    rng = np.random.default_rng(seed)
    index = DriverIndex(**grid)
    drivers: dict[str, LiveDriver] = {}
    for step in range(3 * n):
        roll = rng.random()
        driver_id = f"d{rng.integers(0, n)}"
        driver = drivers.get(driver_id)
        if driver is None or roll < 0.5:
            lat, lng = random_position(rng, 0.02)
            if driver is None or roll < 0.05:  # a new object for the id, as restore_job makes
                driver = drivers[driver_id] = LiveDriver(driver_id, lat, lng, 0.0,
                                                         status=STATUSES[rng.integers(0, len(STATUSES))])
            driver.lat, driver.lng = lat, lng
            index.place(driver)
        elif roll < 0.8:
            driver.status = DriverStatus.IDLE if rng.random() < 0.6 else STATUSES[rng.integers(0, len(STATUSES))]
        else:
            index.discard(driver_id)
            del drivers[driver_id]
    return index, list(drivers.values())


def kernel_args(index: DriverIndex, lat: float, lng: float, radius_m: float, k: int) -> tuple:
    return (lat, lng, radius_m, k, index.lat, index.lng, index.available, index.next_slot, index.head,
            index.n_lat, index.n_lng, index.origin_lat, index.origin_lng, index.step_lat, index.step_lng)


def test_twin_is_plain_python():
    assert not hasattr(twin.grid_nearest, "py_func")
    assert hasattr(kernels.grid_nearest, "py_func")


@SETTINGS
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 150),
    st.integers(1, 12),
    st.sampled_from([0.0, 150.0, 3218.688, math.inf]),
    st.sampled_from([
        {},  # the defaults
        {"per_bucket": 0.5, "min_bucket_m": 5.0, "first_half_span_m": 300.0},  # fine buckets, much overflow
        {"per_bucket": 1.0, "first_half_span_m": 300.0, "max_buckets": 64},  # few buckets
        {"per_bucket": 50.0, "max_bucket_m": 20_000.0},  # coarse buckets
    ]),
)
def test_grid_nearest_equals_twin_and_brute_force(seed, n, k, radius_m, grid):
    index, drivers = random_index(seed, n, grid)
    rng = np.random.default_rng(seed + 1)
    for _ in range(6):
        lat, lng = random_position(rng, 0.03)
        args = kernel_args(index, lat, lng, radius_m, k)
        jitted = kernels.grid_nearest(*args)
        plain = twin.grid_nearest(*args)
        assert np.array_equal(jitted[0], plain[0]) and np.array_equal(jitted[1], plain[1])
        assert answer(index.nearest(lat, lng, radius_m, k)) == brute_force(drivers, lat, lng, radius_m, k)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(1, 60))
def test_cell_nearest_available_matches_brute_force_through_the_cell_api(seed, n):
    rng = np.random.default_rng(seed)
    cell = CellCore("c1")
    for step in range(4 * n):
        driver_id = f"d{rng.integers(0, n)}"
        roll = rng.random()
        if roll < 0.55 or driver_id not in cell.drivers:
            lat, lng = random_position(rng, 0.02)
            cell.driver_seen(driver_id, lat, lng, float(step))
        elif roll < 0.7:
            cell.drivers[driver_id].status = STATUSES[rng.integers(0, len(STATUSES))]
        elif roll < 0.8:
            if cell.drivers[driver_id].status is DriverStatus.IDLE:
                cell.driver_offline(driver_id, float(step))
        elif roll < 0.9:
            cell.remove_driver(driver_id)
        else:
            lat, lng = random_position(rng, 0.02)
            order = LiveOrder(step, 1, lat, lng, lat + 0.01, lng, float(step), float(step))
            cell.restore_job(f"job-{step}", driver_id, [order], picked_up=False, at_restaurant=False,
                             now=float(step))
        if step % 7 == 0:
            lat, lng = random_position(rng, 0.03)
            for k, radius_m in ((1, 5_000.0), (10, 3218.688), (25, math.inf)):
                expected = brute_force(cell.drivers.values(), lat, lng, radius_m, k)
                assert answer(cell.nearest_available(lat, lng, radius_m, k)) == expected
            nearest = cell.nearest_idle(lat, lng, 5_000.0)
            reference = brute_force(cell.drivers.values(), lat, lng, 5_000.0, 1)
            assert (nearest.id if nearest else None) == (reference[0][1] if reference else None)


def test_ties_break_by_lower_id_and_every_tie_reaches_the_cut():
    cell = CellCore("c1")
    for i in (5, 3, 9, 1, 7, 2):
        cell.driver_seen(f"t{i}", LAT + 0.001, LNG, 0.0)
    cell.driver_seen("near", LAT, LNG, 0.0)
    hits = cell.nearest_available(LAT, LNG, 1_000.0, 4)
    assert [h.driver.id for h in hits] == ["near", "t1", "t2", "t3"]
    assert hits[0].distance_m == 0.0 and hits[1].distance_m == hits[3].distance_m > 0
    assert cell.nearest_idle(LAT + 0.001, LNG, 10.0).id == "t1"


def test_radius_is_inclusive_and_bad_queries_answer_nothing():
    cell = CellCore("c1")
    cell.driver_seen("a", LAT + 0.01, LNG, 0.0)
    exact = haversine_m(LAT, LNG, LAT + 0.01, LNG)
    assert [h.driver.id for h in cell.nearest_available(LAT, LNG, exact, 3)] == ["a"]
    assert cell.nearest_available(LAT, LNG, math.nextafter(exact, 0.0), 3) == []
    assert cell.nearest_available(LAT, LNG, 5_000.0, 0) == []
    assert cell.nearest_available(math.nan, LNG, 5_000.0, 3) == []
    assert cell.nearest_available(LAT, LNG, -1.0, 3) == []
    assert CellCore("empty").nearest_available(LAT, LNG, 5_000.0, 3) == []


def test_a_non_finite_fix_does_not_break_the_index():
    cell = CellCore("c1")
    cell.driver_seen("lost", math.nan, math.nan, 0.0)
    cell.driver_seen("a", LAT, LNG, 0.0)
    assert [h.driver.id for h in cell.nearest_available(LAT, LNG, 5_000.0, 5)] == ["a"]
    cell.driver_seen("lost", LAT, LNG + 0.001, 1.0)
    assert [h.driver.id for h in cell.nearest_available(LAT, LNG, 5_000.0, 5)] == ["a", "lost"]


def test_the_grid_follows_the_drivers_and_stays_exact():
    index = DriverIndex(first_half_span_m=500.0)
    rng = np.random.default_rng(3)
    drivers = []
    for i in range(3000):  # spread over ~45 km, far beyond the first grid
        driver = LiveDriver(f"d{i:04d}", LAT + rng.uniform(-0.2, 0.2), LNG + rng.uniform(-0.2, 0.2), 0.0)
        index.place(driver)
        drivers.append(driver)
    assert index._overflow <= len(drivers) // 8 and index.n_lat * index.n_lng * 8 >= len(drivers)
    coarse = index.bucket_m
    for i in range(3000, 20_000):  # many more in the same area: finer buckets
        driver = LiveDriver(f"d{i:05d}", LAT + rng.uniform(-0.2, 0.2), LNG + rng.uniform(-0.2, 0.2), 0.0)
        index.place(driver)
        drivers.append(driver)
    assert index.bucket_m < coarse / 2
    for driver in drivers[1000:]:  # most leave: coarser again
        index.discard(driver.id)
    drivers = drivers[:1000]
    assert index.bucket_m > coarse / 2
    for _ in range(20):
        lat, lng = LAT + rng.uniform(-0.25, 0.25), LNG + rng.uniform(-0.25, 0.25)
        assert answer(index.nearest(lat, lng, 3218.688, 10)) == brute_force(drivers, lat, lng, 3218.688, 10)


def test_a_cell_on_the_antimeridian():
    cell = CellCore("c1")
    cell.driver_seen("west", -17.0, 179.999, 0.0)
    cell.driver_seen("east", -17.0, -179.9985, 0.0)
    cell.driver_seen("far", -17.0, 179.9, 0.0)
    hits = cell.nearest_available(-17.0, -179.9999, 5_000.0, 3)
    assert [h.driver.id for h in hits] == ["west", "east"]
    expected = [haversine_m(-17.0, -179.9999, -17.0, 179.999), haversine_m(-17.0, -179.9999, -17.0, -179.9985)]
    assert np.allclose([h.distance_m for h in hits], expected, rtol=1e-9)  # frame longitudes: last bits


def test_slots_are_reused_and_copies_leave_the_index_alone():
    cell = CellCore("c1")
    for i in range(10):
        cell.driver_seen(f"d{i}", LAT + i * 1e-4, LNG, 0.0)
    capacity = cell._index.lat.shape[0]
    for round_ in range(50):
        assert cell.remove_driver(f"d{round_ % 10}") is not None
        cell.driver_seen(f"d{round_ % 10}", LAT + (round_ % 10) * 1e-4, LNG, 1.0)
    assert cell._index.lat.shape[0] == capacity and len(cell._index) == 10
    driver = cell.drivers["d0"]
    for clone in (copy.deepcopy(driver), pickle.loads(pickle.dumps(driver))):
        assert clone == driver and "_index" not in vars(clone)
        clone.status = DriverStatus.OFFERED
    assert [h.driver.id for h in cell.nearest_available(LAT, LNG, 100.0, 1)] == ["d0"]
    driver.status = DriverStatus.OFFERED
    assert [h.driver.id for h in cell.nearest_available(LAT, LNG, 100.0, 1)] == ["d1"]
