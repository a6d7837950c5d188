"""The catalog benchmark runs end to end at a tiny size and its figures add up."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bench.catalog_load import uncorrected_latencies, wrk_path
from tests.environment import child_environment

GENERATORS = ["aiohttp"] + (["wrk"] if wrk_path() else [])


@pytest.mark.live  # uvicorn server processes and a load generator
@pytest.mark.parametrize("generator", GENERATORS)
def test_catalog_bench_smoke(tmp_path, postgres_server, generator):
    out = tmp_path / "out"
    env = child_environment(DATABASE_URL=postgres_server)
    result = subprocess.run(
        [sys.executable, "-m", "bench.catalog", "--restaurants", "300", "--items", "3", "--duration", "1",
         "--warmup", "0.2", "--no-postgis", "--concurrency", "4", "--load-generator", generator, "--out", str(out),
         "--json", str(tmp_path / "figures.json")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    for phase in ("nearby", "menu", "orders"):
        assert figures["phases"][phase]["ok"] > 0, phase
        assert figures["phases"][phase]["ok"] == figures["phases"][phase]["requests"], phase
    orders = figures["phases"]["orders"]["extra"]
    assert orders["committed"]["with_event"] == orders["committed"]["total"]
    # Exact with aiohttp; wrk does not read the responses in flight when its time is up (their orders commit).
    assert orders["count_matches"], orders
    if generator == "aiohttp":
        assert orders["unacknowledged"] == 0
    assert (out / "catalog.md").exists() and list(out.glob("catalog_*.png"))


def wrk_correct(raw: np.ndarray, interval: int) -> np.ndarray:
    """wrk's stats_correct (src/stats.c) applied to a histogram indexed by microseconds."""
    corrected = raw.copy()
    for n in range(2 * interval, len(corrected)):
        count, m = corrected[n], n - interval
        while count and m > interval:
            corrected[m] += count
            m -= interval
    return corrected


def test_wrk_correction_is_undone_exactly():
    rng = np.random.default_rng(1)
    samples = np.concatenate([rng.integers(200, 3000, 5000), rng.integers(3000, 90000, 60)])
    raw = np.bincount(samples)
    connections, duration_us = 8, 2_000_000
    interval = duration_us // (len(samples) // connections)
    corrected = wrk_correct(raw, interval)
    assert corrected.sum() > raw.sum()
    nonzero = np.flatnonzero(corrected)
    run = {"requests": len(samples), "duration_us": duration_us,
           "latency_us": [[int(v), int(corrected[v])] for v in nonzero]}
    values, counts = uncorrected_latencies(run, connections)
    assert np.array_equal(np.repeat(values, counts), np.sort(samples).astype(float))
