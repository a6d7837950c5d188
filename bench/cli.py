"""``hexdispatch bench NAME ...``: the benchmarks, each a module with ``main(argv) -> int``.

Like the top-level CLI, a benchmark's heavy imports happen only when it runs.
"""

from __future__ import annotations

from server.cli import route

BENCHES: dict[str, tuple[str, str]] = {
    "peak": ("bench.peak", "peak-hour replay against a running server, beside the bare ceiling and the Redis design"),
    "chaos": ("bench.chaos", "the peak hour's city while cell actors, front doors, Redis, Postgres and a Ray node fail"),
    "nearest": ("bench.nearest", "nearest idle drivers: inside a cell actor vs Redis GEOSEARCH"),
    "mdrp": ("bench.mdrp_live", "a Grubhub MDRP day through the live server at an accelerated clock"),
    "catalog": ("bench.catalog", "nearby search, menu and order placement on a metro-sized catalog"),
    "quality": ("bench.mdrp_quality", "offline dispatch quality on every o100t100 MDRP instance"),
    "speed": ("bench.matcher_speed", "matcher tick time, numba vs its plain-Python twin"),
    "fuzz": ("bench.fuzz", "the HTTP API and both websockets under generated bad input, longer than make test"),
}


def main(argv: list[str]) -> int:
    """Route ``hexdispatch bench NAME ...`` to NAME's module; return its exit code."""
    return route(argv, BENCHES, "hexdispatch bench", "benchmarks")
