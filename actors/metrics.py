"""Per-cell load figures: kept in the actor, exported through Ray's metrics API.

Every cell actor owns one :class:`CellMetrics`. The actor records what
happens (a tick and how long it took, a batch of GPS fixes and how old each
fix was on arrival, an offer); :meth:`CellMetrics.export` turns the last
window into figures and sets the Ray gauges, which each node's metrics
agent serves to Prometheus and the Ray dashboard (names ``ray_hexdispatch_cell_*``,
tagged ``cell=<h3 index>``). :meth:`CellMetrics.summary` gives the same
figures to the admin API, with cumulative bucketed histograms of tick time and
GPS lag (:class:`Buckets`) that the front doors add up across cells and export
as Prometheus histograms (``server/metrics.py``).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque

import numpy as np

from dispatch.lifecycle import DriverStatus

#: Ray metric name -> what it says (all tagged with ``cell``; drivers also with ``status``).
METRICS = {
    "hexdispatch_cell_drivers": "drivers held by the cell, by status",
    "hexdispatch_cell_pending_orders": "orders waiting for a driver in the cell",
    "hexdispatch_cell_open_offers": "offers sent and not yet answered",
    "hexdispatch_cell_offers_per_s": "offers sent per second over the last export window",
    "hexdispatch_cell_gps_per_s": "GPS fixes applied per second over the last export window",
    "hexdispatch_cell_tick_ms": "matching tick time, p99 over the last ticks (ms)",
    "hexdispatch_cell_gps_lag_ms": "front door receiving a fix to the cell applying it, p99 (ms)",
}
DRIVER_STATUSES = tuple(status.value for status in DriverStatus)
WINDOW = 512
"""Most recent ticks and fix lags the percentiles are taken over."""


def percentiles_ms(samples_s, quantiles=(50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., ...}`` in milliseconds of samples in seconds (zeros when there are none)."""
    if not samples_s:
        return {f"p{q}": 0.0 for q in quantiles}
    values = np.percentile(np.fromiter(samples_s, dtype=float), quantiles) * 1000.0
    return {f"p{q}": round(float(v), 3) for q, v in zip(quantiles, values)}


#: Histogram bucket upper bounds (seconds) of a tick and of a fix's lag.
TICK_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GPS_LAG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Buckets:
    """A cumulative histogram since the cell started: counts per bucket (``le`` bounds, then +Inf), sum, count."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, values) -> None:
        for value in values:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value

    def report(self) -> dict:
        """``{"le": bounds, "cumulative": counts <= each bound then +Inf, "sum", "count"}`` (Prometheus' shape)."""
        return {"le": list(self.bounds), "cumulative": list(itertools.accumulate(self.counts)),
                "sum": self.sum, "count": sum(self.counts)}


class CellMetrics:
    """Counters and recent samples of one cell, and their Ray gauges (created lazily, inside Ray)."""

    def __init__(self, cell_id: str):
        self.cell_id = cell_id
        self.ticks = 0
        self.offers = 0
        self.gps_fixes = 0
        self.tick_seconds: deque[float] = deque(maxlen=WINDOW)
        self.gps_lag_seconds: deque[float] = deque(maxlen=WINDOW)
        self._window_start: float | None = None
        self._window_offers = 0
        self._window_fixes = 0
        self._gauges: dict | None = None
        self.tick_histogram = Buckets(TICK_BUCKETS_S)
        self.gps_lag_histogram = Buckets(GPS_LAG_BUCKETS_S)

    def tick(self, seconds: float) -> None:
        self.ticks += 1
        self.tick_seconds.append(seconds)
        self.tick_histogram.observe((seconds,))

    def offer(self) -> None:
        self.offers += 1

    def fixes(self, count: int, lags_s) -> None:
        self.gps_fixes += count
        self.gps_lag_seconds.extend(lags_s)
        self.gps_lag_histogram.observe(lags_s)

    def summary(self) -> dict:
        """Totals and recent percentiles (the admin API's view of the cell)."""
        return {
            "ticks": self.ticks, "offers": self.offers, "gps_fixes": self.gps_fixes,
            "tick_ms": {"last": round(self.tick_seconds[-1] * 1000.0, 3) if self.tick_seconds else 0.0,
                        **percentiles_ms(self.tick_seconds, (50, 99))},
            "gps_lag_ms": percentiles_ms(self.gps_lag_seconds),
            "histograms": {"tick_seconds": self.tick_histogram.report(),
                           "gps_lag_seconds": self.gps_lag_histogram.report()},
        }

    def export(self, now: float, load: dict) -> dict:
        """Set the Ray gauges from ``load`` (``CellCore.load()``) and the window since the last export."""
        started = self._window_start if self._window_start is not None else now
        elapsed = max(now - started, 1e-9)
        rates = {
            "offers_per_s": (self.offers - self._window_offers) / elapsed if self._window_start else 0.0,
            "gps_per_s": (self.gps_fixes - self._window_fixes) / elapsed if self._window_start else 0.0,
        }
        self._window_start, self._window_offers, self._window_fixes = now, self.offers, self.gps_fixes
        gauges = self._ray_gauges()
        tags = {"cell": self.cell_id}
        for status in DRIVER_STATUSES:
            gauges["hexdispatch_cell_drivers"].set(load["drivers"].get(status, 0), tags={**tags, "status": status})
        gauges["hexdispatch_cell_pending_orders"].set(load["pending_orders"], tags=tags)
        gauges["hexdispatch_cell_open_offers"].set(load["open_offers"], tags=tags)
        gauges["hexdispatch_cell_offers_per_s"].set(rates["offers_per_s"], tags=tags)
        gauges["hexdispatch_cell_gps_per_s"].set(rates["gps_per_s"], tags=tags)
        summary = self.summary()
        gauges["hexdispatch_cell_tick_ms"].set(summary["tick_ms"]["p99"], tags=tags)
        gauges["hexdispatch_cell_gps_lag_ms"].set(summary["gps_lag_ms"]["p99"], tags=tags)
        return rates

    def _ray_gauges(self) -> dict:
        if self._gauges is None:
            from ray.util.metrics import Gauge

            self._gauges = {
                name: Gauge(name, description=text,
                            tag_keys=("cell", "status") if name == "hexdispatch_cell_drivers" else ("cell",))
                for name, text in METRICS.items()
            }
        return self._gauges
