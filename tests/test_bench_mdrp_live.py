"""``hexdispatch bench mdrp`` on a tiny slice of a real MDRP day at a high speed-up.

A real ``hexdispatch serve`` (Ray, Postgres), real driver and HTTP clients. The
solution files the bench writes are read back and checked independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.mdrp_fleet import Clock
from bench.mdrp_live import DEFAULT_INSTANCE, live_eta_errors, main, time_window
from bench.replay import load_instance
from dispatch.feasibility import check_solution
from dispatch.mdrp import Instance
from dispatch.simulator import AssignmentRecord, CourierMove, Solution

WINDOW = (660, 665)

needs_mdrp = pytest.mark.skipif(not DEFAULT_INSTANCE.is_dir(), reason="MDRP instances not available")


def read_solution(instance: Instance, folder: Path) -> Solution:
    """A solution rebuilt from the three evaluator files alone."""
    courier = {cid: i for i, cid in enumerate(instance.courier_ids)}
    n = instance.n_orders
    solution = Solution(instance=instance, policy="read", pickup_time=np.full(n, np.nan),
                        dropoff_time=np.full(n, np.nan), order_courier=np.full(n, -1, np.int64))
    for line in (folder / "solution_info_assignments.txt").read_text().splitlines()[1:]:
        assigned, pickup, cid, *orders = line.split()
        solution.assignments.append(AssignmentRecord(float(assigned), float(pickup), courier[cid],
                                                     tuple(instance.order_index[o] for o in orders)))
    for line in (folder / "solution_info_orders.txt").read_text().splitlines()[1:]:
        oid, _, _, pickup, dropoff, cid = line.split()
        o = instance.order_index[oid]
        solution.pickup_time[o], solution.dropoff_time[o], solution.order_courier[o] = float(pickup), float(dropoff), courier[cid]
    for line in (folder / "solution_info_couriers.txt").read_text().splitlines()[1:]:
        cid, departure, origin, destination = line.split()
        solution.moves.append(CourierMove(courier[cid], float(departure), origin, destination))
    return solution


@needs_mdrp
@pytest.mark.live  # a `hexdispatch serve` process with a Ray of its own
def test_live_replay_delivers_every_order_once_with_feasible_files(tmp_path, postgres_server):
    out = tmp_path / "out"
    code = main(["--database-url", postgres_server,
                 "--from", str(WINDOW[0]), "--until", str(WINDOW[1]), "--speedup", "240", "--gps-interval", "1",
                 "--out", str(out), "--json", str(tmp_path / "figures.json")])
    figures = json.loads((tmp_path / "figures.json").read_text())
    instance = time_window(load_instance(DEFAULT_INSTANCE), *WINDOW)
    assert figures["orders"] == instance.n_orders > 0
    assert figures["delivered_exactly_once"] is True
    assert figures["delivery"]["delivered_once"] == instance.n_orders
    assert figures["delivery"]["not_delivered"] == figures["delivery"]["delivered_twice"] == []
    assert figures["delivery"]["double_assigned"] == []
    for run in ("live", "offline"):
        assert figures[run]["feasible"] is True and figures[run]["orders_delivered"] == instance.n_orders
        assert check_solution(read_solution(instance, out / instance.name / run)) == []
    live_ctd = figures["live"]["click_to_door"]["mean"]
    assert figures["gap_minutes"] == pytest.approx(live_ctd - figures["offline"]["click_to_door"]["mean"])
    assert figures["target_met"] == (abs(figures["gap_minutes"]) <= figures["target_gap_minutes"])
    assert code == (0 if figures["target_met"] else 1)
    assert figures["cell_params"]["speed_kmh"] == pytest.approx(instance.metres_per_minute * 60 / 1000 * 240)
    assert figures["cell_params"]["match"]["pickup_lead"] == pytest.approx(instance.pickup_service / 2 / 240)
    assert figures["cell_params"]["match"]["pickup_exit"] == pytest.approx(instance.pickup_service / 2 / 240)
    factors = figures["gap_factors"]
    assert factors["dropoff_lag_ms"]["n"] == instance.n_orders and factors["dropoff_lag_ms"]["p50"] >= 0
    assert len(figures["cells"]) == 1
    assert (out / "click_to_door.png").stat().st_size > 0
    report = (out / "mdrp_live.md").read_text()
    assert "slack (live)" in report and "slack (offline)" in report
    # Every delivered order's promise was stored and is scored; the plot of the errors is written.
    eta = figures["live"]["eta"]
    assert eta["placement"]["orders"] == instance.n_orders and eta["assignment"]["orders"] == instance.n_orders
    assert len(figures["estimates_per_order"]) == instance.n_orders
    assert (out / "eta_error.png").stat().st_size > 0 and "| kitchen |" in report


def test_live_estimates_are_scored_at_each_moment_from_the_audit_trail():
    """Placement: the first estimate; kitchen: the one in force just after the kitchen's ready estimate; assignment
    and pickup: the first of each basis. Instance minute 100 is wall time 1000; the day runs 60 times faster."""
    clock = Clock(1000.0, 100.0, 60.0)

    def at(minute: float) -> float:
        return clock.wall(minute)

    def estimate(minute: float, basis: str, dropoff: float) -> dict:
        return {"event": "estimate", "at": at(minute), "payload": {
            "given_at": at(minute), "basis": basis, "dropoff_at": at(dropoff), "dropoff_early": at(dropoff - 5),
            "dropoff_late": at(dropoff + 5), "pickup_at": None, "courier_arrival_at": None}}

    trail = [{"event": "placed", "at": at(100)}, estimate(100, "queue", 140),
             {"event": "revise_ready", "at": at(100.1)}, estimate(100.2, "queue", 130),
             {"event": "assign", "at": at(110)}, estimate(110, "job", 133), estimate(120, "on_board", 136),
             {"event": "deliver", "at": at(135)}]
    result, errors, orders = live_eta_errors(clock, {7: trail, 8: trail[:2]})  # order 8: not delivered
    assert {m: round(result[m]["bias"], 6) for m in ("placement", "kitchen", "assignment", "pickup")} == {
        "placement": 5.0, "kitchen": -5.0, "assignment": -2.0, "pickup": 1.0}
    assert result["placement_range_coverage"] == 1.0 and result["kitchen_range_coverage"] == 1.0
    assert [o["index"] for o in orders] == [7] and orders[0]["dropoff"] == pytest.approx(135)
