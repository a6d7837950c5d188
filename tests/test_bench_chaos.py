"""``hexdispatch bench chaos``: its loss accounting on synthetic records, and the bench itself at toy size.

The accounting tests build audit trails by hand, with one known defect each,
and check that it is counted once, in the phase where it happened. The toy
run starts the bench's own world (Postgres, Redis, Ray, ``serve --workers
2``) as a separate process, injects a cell-actor kill and a Redis restart,
and checks the report's structure and that its accounting agrees with the
audit trail it left.
"""

import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import chaos_audit
from bench.chaos_audit import Phase
from bench.chaos_env import PG_BIN
from tests.environment import child_environment

REPO = Path(__file__).resolve().parents[1]
PHASES = [Phase("control", 0.0), Phase("1. cell", 100.0), Phase("2. redis", 200.0)]


def trail(*steps, driver="d1", job="j1"):
    """An order's events from ``(at, event, status)`` steps; assigns carry ``driver`` and ``job``."""
    events = []
    for seq, (at, kind, status) in enumerate(steps, start=1):
        event = {"seq": seq, "event": kind, "status": status, "at": float(at), "driver_id": None, "job_id": None}
        if kind == "assign":
            event.update(driver_id=driver, job_id=job)
        events.append(event)
    return events


def delivered(start, driver="d1", job="j1", assign_at=None, end=None):
    """A whole, healthy order life from ``start``: placed, assigned, picked up, delivered."""
    assign_at = start + 2 if assign_at is None else assign_at
    end = start + 60 if end is None else end
    return trail((start, "place", "placed"), (assign_at, "assign", "driver_assigned"),
                 (end - 10, "pickup", "picked_up"), (end, "deliver", "delivered"), driver=driver, job=job)


def test_phase_at_charges_times_to_the_phase_they_fall_in():
    assert chaos_audit.phase_at(PHASES, -5.0) == "control"
    assert chaos_audit.phase_at(PHASES, 99.9) == "control"
    assert chaos_audit.phase_at(PHASES, 100.0) == "1. cell"
    assert chaos_audit.phase_at(PHASES, 1e9) == "2. redis"


def test_lost_orders_counts_missing_and_unfinished_orders_where_they_stopped():
    events = {1: delivered(10), 2: trail((20, "place", "placed"), (120, "assign", "driver_assigned")),
              4: trail((30, "place", "placed"), (35, "cancel", "cancelled"))}
    placed = {1: 10.0, 2: 20.0, 3: 250.0, 4: 30.0}  # 3: acknowledged, then absent from the audit trail
    lost = chaos_audit.lost_orders(PHASES, placed, events)
    assert lost == {"control": [], "1. cell": [2], "2. redis": [3]}
    # Without a drain an open order is only unfinished; a missing one is still lost.
    assert chaos_audit.lost_orders(PHASES, placed, events, unfinished_is_lost=False) == {
        "control": [], "1. cell": [], "2. redis": [3]}


def test_lost_status_events_counts_each_unseen_event_due_before_the_customer_left():
    events = {1: delivered(10), 2: delivered(150)}
    seen = {1: [1, 2, 3, 4], 2: [1, 3, 4]}  # order 2's customer missed seq 2 (the assignment at 152)
    until = {1: 100.0, 2: 300.0}
    missed = chaos_audit.lost_status_events(PHASES, events, seen, until)
    assert missed == {"control": [], "1. cell": [(2, 2)], "2. redis": []}
    # Events younger than the grace before the customer left are not due yet.
    early = chaos_audit.lost_status_events(PHASES, {2: delivered(150)}, {2: [1]}, {2: 152.5})
    assert sum(map(len, early.values())) == 0
    # Nothing seen at all: every due event is lost.
    none_seen = chaos_audit.lost_status_events(PHASES, {1: delivered(10)}, {}, {1: 100.0})
    assert none_seen["control"] == [(1, 1), (1, 2), (1, 3), (1, 4)]


def test_events_of_type_counts_re_dispatches_where_they_happened():
    events = {1: trail((10, "place", "placed"), (12, "assign", "driver_assigned"), (120, "unassign", "placed"),
                       (125, "assign", "driver_assigned"), (130, "unassign", "placed")),
              2: delivered(20)}
    assert chaos_audit.events_of_type(PHASES, events, "unassign") == {"control": [], "1. cell": [1, 1],
                                                                      "2. redis": []}


def test_double_assignments_finds_an_order_held_twice_and_a_driver_with_two_open_jobs():
    clean = {1: delivered(10, driver="a", job="ja"), 2: delivered(80, driver="a", job="jb"),
             # a bundle: two orders on one job of one driver is not a double booking
             3: delivered(110, driver="b", job="jc"), 4: delivered(111, driver="b", job="jc", assign_at=112)}
    assert sum(map(len, chaos_audit.double_assignments(PHASES, clean).values())) == 0

    held_twice = {5: trail((10, "place", "placed"), (12, "assign", "driver_assigned"),
                           (130, "assign", "driver_assigned"), (150, "deliver", "delivered"))}
    found = chaos_audit.double_assignments(PHASES, held_twice)
    assert len(found["1. cell"]) == 1 and "order 5" in found["1. cell"][0]
    assert not found["control"] and not found["2. redis"]

    # Unassigned, then assigned again: a re-dispatch, not a double assignment.
    redispatched = {6: trail((10, "place", "placed"), (12, "assign", "driver_assigned"),
                             (20, "unassign", "placed"), (25, "assign", "driver_assigned"),
                             (80, "deliver", "delivered"))}
    assert sum(map(len, chaos_audit.double_assignments(PHASES, redispatched).values())) == 0

    two_jobs = {7: delivered(150, driver="c", job="j1", end=260),
                8: delivered(200, driver="c", job="j2", assign_at=210, end=280)}
    found = chaos_audit.double_assignments(PHASES, two_jobs)
    assert found["2. redis"] == ["driver c given job j2 while job j1 was open"]
    assert not found["control"] and not found["1. cell"]


def test_stranded_orders_are_charged_to_the_first_check_that_finds_them():
    events = {
        1: delivered(10),                                             # done long before any check
        2: trail((20, "place", "placed"), (21, "accept", "accepted")),  # stuck from 21 on
        3: trail((90, "place", "placed"), (95, "assign", "driver_assigned")),  # too young at the first check
        4: delivered(150, end=290),                                   # slow but progressing
        6: trail((110, "place", "placed"), (111, "accept", "accepted")),  # cooking until 230, then stuck
        7: trail((20, "place", "placed"), (25, "mark_ready", "ready")),  # ready early, never picked up
    }
    placed = {1: 10.0, 2: 20.0, 3: 90.0, 4: 150.0, 5: 30.0, 6: 110.0, 7: 20.0}  # 5: never recorded
    ready = {2: 30.0, 6: 230.0, 7: 80.0}
    checks = [("control", 100.0), ("1. cell", 200.0), ("2. redis", 300.0)]
    stranded = chaos_audit.stranded_orders(checks, placed, events, stall_s=60.0, ready_estimate=ready)
    assert stranded == {"control": [2, 5, 7], "1. cell": [3], "2. redis": [6]}


def test_offer_latency_leaves_deliberate_waits_out_and_counts_never_offered_as_infinite():
    placed = {1: 10.0, 2: 11.0, 3: 12.0}
    first_offer = {1: (10.05, {"queued": 0.04}), 2: (71.0, {"deferred": 59.0})}
    latencies = chaos_audit.offer_latency_ms(placed, first_offer, ("held", "deferred"))
    assert latencies[0] == (10.0, pytest.approx(50.0))
    assert latencies[1] == (12.0, math.inf)
    assert len(latencies) == 2


def test_slow_offers_name_each_late_first_offer_with_its_cell_s_reasons():
    from types import SimpleNamespace

    from bench.chaos import slow_offers

    tally = SimpleNamespace(
        placed_at={1: 10.0, 2: 11.0, 3: 12.0, 4: 105.0},
        first_offer={1: (10.05, {"unmatched": 0.04}), 2: (71.0, {"deferred": 59.0}),
                     4: (113.0, {"unmatched": 7.9, "offered": 0.0})})
    slow = slow_offers(100.0, 0.0, tally, PHASES)
    assert [(o["order_id"], o["phase"]) for o in slow] == [(3, "control"), (4, "1. cell")]
    assert slow[0]["ms"] is None and slow[0]["waited_s"] == {}  # never offered
    assert slow[1]["ms"] == pytest.approx(8000.0) and slow[1]["waited_s"] == {"unmatched": 7.9}


def test_recovery_is_the_first_window_after_the_fault_under_the_target():
    fast = [(float(t), 20.0) for t in range(0, 100)]
    slow = [(100.0 + t, 5000.0) for t in range(0, 12)]  # the fault at 100 s hurts 12 s of placements
    after = [(112.0 + t, 30.0) for t in range(0, 50)]
    series = chaos_audit.rolling_p99(fast + slow + after, 0.0, 162.0, window_s=5.0)
    assert chaos_audit.recovery_s(series, 100.0, 100.0) == pytest.approx(12.0)
    assert chaos_audit.recovery_s(series, 0.0, 100.0) == 0.0
    never = chaos_audit.rolling_p99(fast + [(100.0 + t, math.inf) for t in range(60)], 0.0, 160.0, window_s=5.0)
    assert chaos_audit.recovery_s(never, 100.0, 100.0) is None
    assert chaos_audit.p99([1.0, math.inf]) == math.inf
    assert chaos_audit.p99([float(v) for v in range(1, 101)]) == pytest.approx(99.01)


@pytest.mark.live  # its own Postgres, Redis, Ray and server: not part of `make test-fast`
@pytest.mark.skipif(not shutil.which("redis-server") or not (PG_BIN / "initdb").exists(),
                    reason="the bench starts its own redis-server and Postgres")
def test_chaos_bench_at_toy_size(tmp_path):
    """The bench end to end, in its own process: two cheap faults, the report, the accounting's inputs."""
    out = tmp_path / "chaos"
    argv = ["--drivers", "30", "--processes", "1", "--restaurants", "3", "--radius-m", "400", "--prep-minutes", "1",
            "--orders-per-minute", "60", "--faults", "cell,redis", "--window", "6", "--stall", "4",
            "--recovery-window", "2", "--drain", "0", "--workers", "1", "--out", str(out)]
    result = subprocess.run([sys.executable, "-m", "bench.chaos", *argv], cwd=REPO, env=child_environment(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads((out / "chaos.json").read_text())
    assert "errors" not in figures, figures.get("errors")
    run = figures["chaos"]
    assert [row["phase"] for row in run["phases"]] == ["none (control)", "1. cell", "2. redis"]
    for row in run["phases"][1:]:
        assert row["injection_error"] is None, row
        assert row["detail"]
    assert "cell-" in run["phases"][1]["detail"]
    assert run["orders_placed"] > 0
    assert sum(row["orders_placed"] for row in run["phases"]) == run["orders_placed"]
    for key in ("lost_orders", "lost_status_events", "double_assignments", "stranded_orders", "recovery_s",
                "placement_to_offer_p99_ms"):
        assert all(key in row for row in run["phases"]), key
    assert {(t["fault"], t["what"]) for t in figures["targets"]} == {
        (f, w) for f in ("cell", "redis")
        for w in ("lost_orders", "lost_status_events", "double_assignments", "stranded_orders", "recovery_s")}
    for name in ("chaos.md", "chaos.json", "chaos_latency.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "chaos.md").read_text()
    assert "| 1. cell |" in report and "| 2. redis |" in report
    assert all((o["ms"] is None or o["ms"] > 100) and o["phase"] for o in run["slow_offers"])
    # The bench stopped everything it started.
    world = figures["environment"]["world"]
    for name, port in world["ports"].items():
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listening on {port}"
    assert not Path(world["home"]).exists()
