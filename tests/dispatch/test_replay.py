"""Replays of MDRP instances (random and real): feasible, deterministic, evaluator files."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.feasibility import check_solution
from dispatch.matcher import POLICIES
from dispatch.mdrp import Instance, parse_instance
from dispatch.metrics import solution_metrics
from dispatch.simulator import replay

MDRP_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "mdrp" / "instances"
REAL_INSTANCE = MDRP_DIR / "0o100t100s1p100"
needs_mdrp = pytest.mark.skipif(not REAL_INSTANCE.is_dir(), reason=f"MDRP instances not found at {MDRP_DIR}")


def random_instance_text(seed: int, n_orders: int, n_couriers: int, n_restaurants: int) -> dict[str, str]:
    rng = np.random.default_rng(seed)
    rows = lambda header, items: "\n".join([header] + ["\t".join(map(str, item)) for item in items]) + "\n"
    restaurants = [(f"r{i}", *rng.integers(0, 8000, 2)) for i in range(n_restaurants)]
    orders = []
    for i in range(n_orders):
        placed = int(rng.integers(0, 120))
        orders.append((f"o{i}", *rng.integers(0, 8000, 2), placed, f"r{rng.integers(n_restaurants)}",
                       placed + int(rng.integers(0, 30))))
    couriers = []
    for i in range(n_couriers):
        on = int(rng.integers(0, 100))
        couriers.append((f"c{i}", *rng.integers(0, 8000, 2), on, on + int(rng.integers(30, 120))))
    return {
        "instance_parameters.txt": rows("mpm\tpickup\tdropoff\ttarget\tmax\tpay\thourly", [(320, 4, 4, 40, 90, 10, 15)]),
        "restaurants.txt": rows("restaurant\tx\ty", restaurants),
        "orders.txt": rows("order\tx\ty\tplacement_time\trestaurant\tready_time", orders),
        "couriers.txt": rows("courier\tx\ty\ton_time\toff_time", couriers),
    }


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 8), st.integers(1, 6),
       st.sampled_from(POLICIES))
def test_random_instances_replay_feasibly_and_deterministically(seed, n_orders, n_couriers, n_restaurants, policy):
    instance = parse_instance("random", random_instance_text(seed, n_orders, n_couriers, n_restaurants))
    solution = replay(instance, policy)
    assert check_solution(solution) == []
    delivered = ~np.isnan(solution.dropoff_time)
    assert (solution.pickup_time[delivered] >= instance.order_ready[delivered]).all()
    assert (solution.pickup_time[delivered] <= instance.courier_off[solution.order_courier[delivered]]).all()
    assert (solution.dropoff_time[delivered] > solution.pickup_time[delivered]).all()
    jobs = [o for a in solution.assignments for o in a.orders]
    assert len(jobs) == len(set(jobs)) == delivered.sum()
    again = replay(instance, policy)
    assert again.assignments == solution.assignments and again.moves == solution.moves


def test_feasibility_checker_catches_broken_rules():
    instance = parse_instance("random", random_instance_text(3, 30, 5, 3))
    solution = replay(instance, "slack")
    assert solution.assignments, "the random instance should deliver something"
    first = solution.assignments[0]
    early = dataclasses.replace(first, pickup_time=first.pickup_time - 1)
    broken = dataclasses.replace(solution, assignments=[early] + solution.assignments[1:])
    assert any("before earliest possible" in p for p in check_solution(broken))
    twice = dataclasses.replace(solution, assignments=solution.assignments + [first])
    assert any("assigned twice" in p for p in check_solution(twice))
    premature = dataclasses.replace(first, assignment_time=instance.order_placed[first.orders[0]] - 1)
    assert any("before an order was placed" in p
               for p in check_solution(dataclasses.replace(solution, assignments=[premature] + solution.assignments[1:])))


def load_real(n_orders: int) -> Instance:
    texts = {p.name: p.read_text() for p in REAL_INSTANCE.iterdir() if p.suffix == ".txt"}
    return parse_instance(REAL_INSTANCE.name, texts).first_orders(n_orders)


@needs_mdrp
def test_small_real_instance_replays_and_writes_evaluator_files(tmp_path):
    from bench.replay import write_solution

    instance = load_real(80)
    results = {}
    for policy in POLICIES:
        solution = replay(instance, policy)
        assert check_solution(solution) == []
        metrics = solution_metrics(solution)
        assert metrics["orders_delivered"] == instance.n_orders
        results[policy] = metrics["click_to_door"]["mean"]
        # Click-to-door is never below the floor: prep + drive + service.
        ctd = solution.dropoff_time - instance.order_placed
        r = instance.order_restaurant
        floor = (instance.order_ready - instance.order_placed + instance.pickup_service / 2
                 + instance.travel(instance.restaurant_x[r], instance.restaurant_y[r], instance.order_x,
                                   instance.order_y) + instance.dropoff_service / 2)
        assert (ctd >= floor).all()
    assert results["slack"] <= results["nearest"] + 0.5
    write_solution(solution, tmp_path, metrics)
    orders_lines = (tmp_path / "solution_info_orders.txt").read_text().splitlines()
    assert orders_lines[0] == "order placement_time ready_time pickup_time dropoff_time courier"
    assert len(orders_lines) == instance.n_orders + 1
    moves = [line.split() for line in (tmp_path / "solution_info_couriers.txt").read_text().splitlines()[1:]]
    last = {}
    for courier, _, origin, destination in moves:
        assert origin == last.get(courier, "0")
        last[courier] = destination
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["orders_delivered"] == instance.n_orders
    assert math.isclose(written["click_to_door"]["mean"], results["optimal"])


def test_feasibility_checker_follows_couriers_timelines():
    instance = parse_instance("random", random_instance_text(5, 30, 5, 3))
    solution = replay(instance, "slack")
    first = solution.moves[0]
    teleport = dataclasses.replace(first, origin=instance.restaurant_ids[0])
    broken = dataclasses.replace(solution, moves=[teleport] + solution.moves[1:])
    assert any("expected 0" in p for p in check_solution(broken))
    late_start = dataclasses.replace(solution.moves[1], departure_time=solution.moves[1].departure_time + 1000)
    broken = dataclasses.replace(solution, moves=[first, late_start] + solution.moves[2:])
    assert any("not at" in p or "departs before arriving" in p for p in check_solution(broken))


def test_replay_cli_writes_files_and_table(tmp_path, capsys):
    from bench.replay import main

    folder = tmp_path / "instances" / "tiny"
    folder.mkdir(parents=True)
    for name, text in random_instance_text(11, 25, 4, 3).items():
        (folder / name).write_text(text)
    out = tmp_path / "out"
    assert main([str(tmp_path / "instances"), "--policy", "slack", "--policy", "nearest", "--out", str(out),
                 "--quiet"]) == 0
    for policy in ("slack", "nearest"):
        written = sorted(p.name for p in (out / "tiny" / policy).iterdir())
        assert written == ["metrics.json", "solution_info_assignments.txt", "solution_info_couriers.txt",
                           "solution_info_orders.txt"]
        assert json.loads((out / "tiny" / policy / "metrics.json").read_text())["feasible"]
    table = capsys.readouterr().out
    assert "| tiny | slack |" in table and "| tiny | nearest |" in table
    assert (out / "comparison.md").read_text().strip() == table.strip()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--quiet"]) == 2


def test_replay_cli_off_a_terminal_is_quiet_explains_columns_and_where_the_data_lives(tmp_path):
    """Issue 15: no progress bars in redirected output, a legend under the table, and a missing instance folder
    says where the MDRP data lives."""
    import subprocess
    import sys

    from bench.replay import COLUMN_MEANINGS, TABLE_COLUMNS
    from tests.environment import child_environment

    assert set(COLUMN_MEANINGS) == set(TABLE_COLUMNS) - {"instance", "policy"}
    hexdispatch = Path(sys.executable).with_name("hexdispatch")
    folder = tmp_path / "instances" / "tiny"
    folder.mkdir(parents=True)
    for name, text in random_instance_text(3, 20, 3, 2).items():
        (folder / name).write_text(text)
    done = subprocess.run([str(hexdispatch), "replay", str(tmp_path / "instances"), "--policy", "nearest", "--policy",
                           "slack"], capture_output=True, text=True, env=child_environment(), timeout=600)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr + done.stdout and "it/s" not in done.stderr and "min/s" not in done.stderr
    for name, meaning in COLUMN_MEANINGS.items():
        assert f"* {name}: {meaning}" in done.stdout

    missing = subprocess.run([str(hexdispatch), "replay", str(tmp_path / "nowhere")], capture_output=True, text=True,
                             env=child_environment(), timeout=120)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "../shared/mdrp/instances" in missing.stderr and "grubhub/mdrplib" in missing.stderr
