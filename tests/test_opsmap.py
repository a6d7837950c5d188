"""The ops map's frames (``dispatch.opsmap``): what a cell reports and what one viewer is sent."""

import h3
import orjson
import pytest

from dispatch.cell import CellCore, LiveOrder, SendToDriver
from dispatch.lifecycle import DriverEvent
from dispatch.opsmap import (
    MAX_DRIVERS_PER_FRAME, MAX_FRAME_BYTES, MAX_JOBS_PER_FRAME, MAX_ORDERS_PER_FRAME, Viewport, cell_view,
    compose_frame, hexagon, sample_rank,
)
from dispatch.lifecycle import DriverStatus
from server.auth import MAX_SUBJECT_LEN

LAT, LNG = 41.88, -87.63
T0 = 1_800_000_000.0
CELL = h3.latlng_to_cell(LAT, LNG, 6)


def order(oid: int, dlat: float = 0.0) -> LiveOrder:
    return LiveOrder(oid, restaurant_id=oid, restaurant_lat=LAT + dlat, restaurant_lng=LNG,
                     dropoff_lat=LAT + dlat + 0.01, dropoff_lng=LNG + 0.01, placed_at=T0, ready_at=T0)


def assigned(cell: CellCore, driver_id: str, where: tuple[float, float]) -> str:
    """``driver_id`` appears at ``where`` and is assigned order 1 (offered, accepted, persisted): the job's id."""
    cell.driver_seen(driver_id, *where, T0)
    cell.add_order(order(1))
    [offer] = [c.message for c in cell.tick(T0) if isinstance(c, SendToDriver)]
    [persist] = cell.accept(driver_id, offer.offer_id, T0 + 1)
    cell.assignment_persisted(persist.job_id, ok=True)
    return persist.job_id


def busy_cell() -> CellCore:
    """A cell with a driver on a job (picked up), one offered, one idle, one offline, and one order pending."""
    cell = CellCore(CELL)
    job_id = assigned(cell, "on-job", (LAT + 0.001, LNG))
    cell.job_event("on-job", job_id, DriverEvent.ARRIVE)
    cell.job_event("on-job", job_id, DriverEvent.PICK_UP)
    cell.driver_seen("offered", LAT + 0.002, LNG, T0 + 2)
    cell.add_order(order(2, dlat=0.001))
    cell.tick(T0 + 2)
    cell.driver_seen("idle", LAT - 0.003, LNG, T0 + 2)
    cell.driver_seen("gone", LAT - 0.004, LNG, T0 + 2)
    cell.driver_offline("gone", T0 + 3)
    cell.add_order(order(3, dlat=0.002))
    return cell


def test_a_cells_view_holds_its_load_drivers_pending_orders_and_jobs():
    view = cell_view(busy_cell())
    statuses = {row[0]: row[3] for row in view["driver_sample"]}
    assert statuses == {"on-job": "delivering", "offered": "offered", "idle": "idle"}  # offline drivers not drawn
    assert view["drivers_total"] == 3 and view["drivers"]["offline"] == 1
    assert sorted(row[0] for row in view["pending"]) == [2, 3]  # offered or not yet, but nobody's job
    [job] = view["jobs"]
    assert job[0] == "on-job" and job[5] == [1]
    assert job[3:5] == [pytest.approx(LAT + 0.01), pytest.approx(LNG + 0.01)]  # picked up: heading to the drop-off
    assert view["pending_orders"] == 1 and view["open_offers"] == 1


def test_before_pick_up_a_job_heads_to_the_restaurant():
    cell = CellCore(CELL)
    assigned(cell, "d", (LAT + 0.003, LNG))
    [job] = cell_view(cell)["jobs"]
    assert job[1:5] == [pytest.approx(LAT + 0.003), pytest.approx(LNG), pytest.approx(LAT), pytest.approx(LNG)]


def test_a_cell_reports_a_bounded_stable_sample_of_its_drivers():
    cell = CellCore(CELL)
    for i in range(50):
        cell.driver_seen(f"d{i}", LAT + i * 1e-4, LNG, T0)
    first = cell_view(cell, max_drivers=10)
    assert len(first["driver_sample"]) == 10 and first["drivers_total"] == 50
    expected = sorted((f"d{i}" for i in range(50)), key=sample_rank)[:10]
    assert [row[0] for row in first["driver_sample"]] == expected
    for i in range(50):  # everybody moves: the same drivers are sampled
        cell.driver_seen(f"d{i}", LAT + i * 1e-4 + 1e-3, LNG, T0 + 5)
    assert sorted(row[0] for row in cell_view(cell, max_drivers=10)["driver_sample"]) == sorted(expected)


def view_of(cell_id: str, drivers=(), pending=(), jobs=(), **load) -> dict:
    return {"cell": cell_id, "drivers": load.pop("by_status", {"idle": len(drivers)}), "pending_orders": len(pending),
            "open_offers": 0, "tick_ms": {"last": 1.0, "p50": 0.5, "p99": 2.0}, "gps_lag_ms": {"p99": 3.0},
            "drivers_total": len(drivers), "driver_sample": list(drivers), "pending": list(pending), "jobs": list(jobs),
            **load}


def test_a_frame_draws_every_cell_as_its_hexagon_with_its_metrics():
    west = h3.grid_ring(CELL, 1)[0]
    frame = compose_frame([view_of(west, by_status={"idle": 2, "delivering": 1, "offline": 4}, pending=[[9, LAT, LNG, 0, 0]]),
                           view_of(CELL)], None, T0)
    assert [c["cell"] for c in frame.cells] == sorted([CELL, west])
    cell = next(c for c in frame.cells if c["cell"] == west)
    assert len(cell["boundary"]) == 6
    assert h3.latlng_to_cell(*(sum(p[i] for p in cell["boundary"]) / 6 for i in (0, 1)), 6) == west
    assert cell["idle_drivers"] == 2 and cell["pending_orders"] == 1 and cell["tick_ms_p99"] == 2.0
    assert cell["drivers"] == {"idle": 2, "delivering": 1}
    assert frame.totals["pending_orders"] == frame.totals["orders_waiting"] == 1 and frame.at == T0


def test_a_frame_holds_only_what_is_in_the_viewport():
    inside, outside = [["a", LAT, LNG, "idle"]], [["b", LAT + 1, LNG, "idle"]]
    viewport = Viewport(LAT - 0.1, LNG - 0.1, LAT + 0.1, LNG + 0.1)
    frame = compose_frame([view_of(CELL, inside + outside, pending=[[1, LAT, LNG, 0, 0], [2, LAT + 1, LNG, 0, 0]],
                                   jobs=[["a", LAT, LNG, LAT, LNG, [3]], ["b", LAT + 1, LNG, LAT, LNG, [4]]])],
                          viewport, T0)
    assert [d[0] for d in frame.drivers] == ["a"]
    assert [o[0] for o in frame.pending] == [1] and [j[0] for j in frame.jobs] == ["a"]
    assert frame.totals["drivers"] == 2 and frame.totals["drivers_in_view"] == 1
    assert len(frame.cells) == 1  # cells are always all sent: their panel lists them


def test_a_frame_samples_drivers_down_to_its_cap_the_same_way_every_time():
    drivers = [[f"d{i}", LAT + i * 1e-5, LNG, "idle"] for i in range(300)]
    frame = compose_frame([view_of(CELL, drivers)], None, T0, max_drivers=40)
    assert len(frame.drivers) == 40 and frame.totals["drivers_sampled"]
    assert frame.totals["drivers_in_view"] == 300
    again = compose_frame([view_of(CELL, list(reversed(drivers)))], None, T0 + 1, max_drivers=40)
    assert sorted(d[0] for d in again.drivers) == sorted(d[0] for d in frame.drivers)
    assert not compose_frame([view_of(CELL, drivers)], None, T0, max_drivers=300).totals["drivers_sampled"]


def test_a_viewport_across_the_antimeridian():
    viewport = Viewport(-10, 170, 10, -170)
    assert viewport.contains(0, 175) and viewport.contains(0, -175)
    assert not viewport.contains(0, 0) and not viewport.contains(20, 175)


def test_hexagon_corners_are_the_cells_own():
    assert hexagon(CELL) == tuple((round(a, 6), round(b, 6)) for a, b in h3.cell_to_boundary(CELL))


def test_a_frame_at_every_cap_with_the_longest_ids_fits_the_ops_sockets_bound():
    cells = sorted(h3.grid_disk(CELL, 5))[:80]  # the default most cells
    ids = [f"{i:0{MAX_SUBJECT_LEN}d}" for i in range(MAX_DRIVERS_PER_FRAME)]
    big = 2**63 - 1
    views = [view_of(cell, by_status={status.value: 10**6 for status in DriverStatus}, node_id="f" * 56,
                     ticks=big, offers=big, gps_fixes=big) for cell in cells]
    views[0].update(driver_sample=[[i, -89.123456, -179.123456, "at_restaurant"] for i in ids],
                    drivers_total=len(ids),
                    pending=[[big, -89.12345, -179.12345, -89.12345, -179.12345]] * MAX_ORDERS_PER_FRAME,
                    jobs=[[ids[0], -89.12345, -179.12345, -89.12345, -179.12345, [big] * 4]] * MAX_JOBS_PER_FRAME)
    frame = compose_frame(views, None, T0, unanswered=cells)
    assert len(frame.drivers) == MAX_DRIVERS_PER_FRAME and len(frame.cells) == 80
    assert len(orjson.dumps(frame.to_dict())) < MAX_FRAME_BYTES
