"""Cells' cumulative histograms (``actors.metrics.Buckets``) and their sum across cells at the front door."""

import random

import numpy as np

from actors.metrics import TICK_BUCKETS_S, Buckets, CellMetrics
from server.metrics import merge_histograms


def test_buckets_count_like_prometheus_le():
    rng = random.Random(15)
    values = [rng.choice([rng.uniform(0, 3.0), rng.choice(TICK_BUCKETS_S)]) for _ in range(2000)]
    buckets = Buckets(TICK_BUCKETS_S)
    buckets.observe(values)
    report = buckets.report()
    expected = [sum(v <= bound for v in values) for bound in TICK_BUCKETS_S] + [len(values)]
    assert report["cumulative"] == expected and report["count"] == len(values)
    assert np.isclose(report["sum"], sum(values))


def test_front_door_sums_the_cells_histograms():
    cells = [CellMetrics(f"cell-{i}") for i in range(3)]
    for i, cell in enumerate(cells):
        for k in range(10 * (i + 1)):
            cell.tick(0.0007 * k)
        cell.fixes(2, [0.02, 7.0 + i])
    merged = merge_histograms([c.summary()["histograms"]["tick_seconds"] for c in cells])
    assert merged["count"] == 60 and merged["cumulative"][-1] == 60
    columns = [c.summary()["histograms"]["tick_seconds"]["cumulative"] for c in cells]
    assert merged["cumulative"] == [sum(col) for col in zip(*columns)]
    lags = merge_histograms([c.summary()["histograms"]["gps_lag_seconds"] for c in cells])
    assert lags["count"] == 6 and lags["cumulative"][lags["le"].index(0.025)] == 3
    assert merge_histograms([]) is None
