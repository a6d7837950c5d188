"""Speed benchmark: one matching tick, 1,000 pending orders x 10,000 drivers, great-circle model.

Times the real :func:`dispatch.matcher.match` (``policy="slack"``) with the jitted
kernels against the same call on their plain-Python twins (and checks both
decide alike), numba compilation cold and from cache (in fresh subprocesses),
and a full replay of ``5o100t100s1p100``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dispatch import kernels
from dispatch.jit import load_twin
from dispatch.matcher import Drivers, MatchParams, MatchResult, Orders, TravelModel, match
from server.cli import parser_for

REPO = Path(__file__).resolve().parents[1]
FULL_REPLAY = REPO.parent / "shared" / "mdrp" / "instances" / "5o100t100s1p100"


def city(seed: int, n_orders: int, n_drivers: int, n_restaurants: int = 800):
    """A random Manhattan-sized situation: (now, drivers, orders)."""
    rng = np.random.default_rng(seed)
    lng = lambda n: rng.uniform(-74.02, -73.90, n)
    lat = lambda n: rng.uniform(40.70, 40.82, n)
    rest_lng, rest_lat = lng(n_restaurants), lat(n_restaurants)
    restaurant = rng.integers(0, n_restaurants, n_orders)
    placed = -rng.integers(0, 20, n_orders).astype(np.float64)
    drivers = Drivers(x=lng(n_drivers), y=lat(n_drivers), free_at=rng.integers(-5, 15, n_drivers).astype(np.float64),
                      capacity=rng.integers(1, 4, n_drivers), shift_end=rng.integers(30, 480, n_drivers).astype(np.float64))
    orders = Orders(restaurant_x=rest_lng[restaurant], restaurant_y=rest_lat[restaurant], drop_x=lng(n_orders),
                    drop_y=lat(n_orders), placed_at=placed, ready_at=placed + rng.integers(0, 40, n_orders),
                    restaurant_id=restaurant)
    return 0.0, drivers, orders


def same_decision(a: MatchResult, b: MatchResult) -> bool:
    """Whether two :func:`match` results commit, hold and rank every order alike."""
    return (a.jobs == b.jobs and np.array_equal(a.order_driver, b.order_driver)
            and np.array_equal(a.order_held, b.order_held) and np.array_equal(a.order_urgency, b.order_urgency))


def timed(function, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


COMPILE_SNIPPET = """
import time, numpy as np
started = time.perf_counter()
from bench.matcher_speed import city
from dispatch.matcher import MatchParams, TravelModel, match
now, drivers, orders = city(0, 50, 200)
imported = time.perf_counter()
match(now, drivers, orders, TravelModel.great_circle(), MatchParams(), "slack")
print(time.perf_counter() - imported)
"""


def compile_seconds(cache_dir: str) -> float:
    """Seconds for the first tick in a fresh interpreter whose numba cache is ``cache_dir``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = parser_for("python -m bench.matcher_speed", __doc__)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--drivers", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--twin-repeats", type=int, default=3)
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as cache_dir:
        cold = compile_seconds(cache_dir)
        warm = compile_seconds(cache_dir)
    travel, params = TravelModel.great_circle(speed_kmh=20.0), MatchParams(pickup_lead=2.0)
    now, drivers, orders = city(1, args.orders, args.drivers)
    twin = load_twin(kernels)
    jitted_result = match(now, drivers, orders, travel, params, "slack", kernels)
    twin_result = match(now, drivers, orders, travel, params, "slack", twin)
    assert same_decision(jitted_result, twin_result), "match() on the jitted kernels disagrees with their twins"
    jitted = timed(lambda: match(now, drivers, orders, travel, params, "slack", kernels), args.repeats)
    plain = timed(lambda: match(now, drivers, orders, travel, params, "slack", twin), args.twin_repeats)
    figures = {
        "orders": args.orders,
        "drivers": args.drivers,
        "committed": int((jitted_result.order_driver >= 0).sum()),
        "tick_jitted_median_ms": 1000 * statistics.median(jitted),
        "tick_twin_median_ms": 1000 * statistics.median(plain),
        "speedup": statistics.median(plain) / statistics.median(jitted),
        "compile_cold_s": cold,
        "compile_from_cache_s": warm,
    }
    if not args.skip_replay and FULL_REPLAY.is_dir():
        from bench.replay import run_replay

        metrics, _ = run_replay(FULL_REPLAY, "slack", None, 1.0, progress=False)
        figures["replay_5o100t100s1p100_slack_s"] = metrics["replay_seconds"]
        figures["replay_5o100t100s1p100_feasible"] = metrics["feasible"]
    for key, value in figures.items():
        print(f"{key:40s} {value:.3f}" if isinstance(value, float) else f"{key:40s} {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    ok = figures["tick_jitted_median_ms"] < 10.0 and figures["speedup"] >= 30.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
