"""Prometheus ``/metrics`` of one front door (``prometheus_client``; the registry lives on ``app.state.metrics``).

What a scrape shows:

* ``hexdispatch_http_request_duration_seconds{method, route, status}``: a histogram per route template
  (``/v1/orders/{order_id}``, never the raw path), timed by :class:`RequestMetrics`.
* ``hexdispatch_event_loop_lag_seconds``: how late a 0.25 s sleep wakes up (a histogram), and the loop
  guard's queued readers (``hexdispatch_loop_guard_waits_total``).
* ``hexdispatch_gc_pause_seconds{generation}``: each collection's pause (a histogram, from ``GcWatch``).
* From the gateway (synced every ``sync_s`` and at each scrape): websocket connections by role, frames in
  and out by role, GPS fixes and the share taken by the fast path, sockets closed for falling behind
  (outbox overflows) and the frames they dropped, positions superseded before they were sent, refusals.
* The cells' figures, from their load reports (``CellActor.load``) gathered every ``cell_report_s``: tick
  time and GPS lag as real histograms summed over every cell (``hexdispatch_cell_tick_seconds``,
  ``hexdispatch_cell_gps_lag_seconds``), and per cell its drivers by status, pending orders and open offers.
  Every front door reports every cell: aggregate them with ``max by (cell)``, or scrape one front door.

With ``--workers N``, ``hexdispatch serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` and prometheus_client's
multiprocess mode adds up every worker's figures, whichever worker answers the scrape.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

log = logging.getLogger("hexdispatch.metrics")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOP_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GC_PAUSE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UNMATCHED = "<unmatched>"
#: Websocket roles: apps, and admins watching the ops map.
ROLES = ("driver", "customer", "admin")
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class FrontDoorMetrics:
    """This process's metrics: histograms observed as things happen, counters and gauges synced from the app's
    state, and the cells' figures collected at scrape time."""

    def __init__(self, app, cell_report_s: float = 5.0, loop_probe_s: float = 0.25, sync_s: float = 1.0):
        self.app = app
        self.cell_report_s = cell_report_s
        self.loop_probe_s = loop_probe_s
        self.sync_s = sync_s
        #: Multiprocess mode: every worker's figures live in files there, added up at each scrape.
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_ENV) or None
        # In multiprocess mode the recording metrics belong to no registry: a scrape reads the files.
        self.registry = CollectorRegistry(auto_describe=True)
        into = None if self.multiprocess_dir else self.registry
        self.requests = Histogram("hexdispatch_http_request_duration_seconds",
                                  "HTTP request latency by route template, method and status",
                                  ("method", "route", "status"), buckets=LATENCY_BUCKETS_S, registry=into)
        self.loop_lag = Histogram("hexdispatch_event_loop_lag_seconds",
                                  "how late the event loop runs a timer that should have fired",
                                  buckets=LOOP_LAG_BUCKETS_S, registry=into)
        self.gc_pauses = Histogram("hexdispatch_gc_pause_seconds", "each garbage collection's pause, by generation",
                                   ("generation",), buckets=GC_PAUSE_BUCKETS_S, registry=into)
        self.counters = {
            "frames_in": Counter("hexdispatch_ws_frames_in", "websocket frames in, by role", ("role",), registry=into),
            "frames_out": Counter("hexdispatch_ws_frames_out", "websocket frames out, by role", ("role",),
                                  registry=into),
            "gps_in": Counter("hexdispatch_gps_fixes", "GPS fixes received", registry=into),
            "gps_fast": Counter("hexdispatch_gps_fast_path_fixes", "GPS fixes taken by the fast path (frame_sink)",
                                registry=into),
            "closed_behind": Counter("hexdispatch_outbox_overflows",
                                     "sockets closed (1013) for falling behind their outbox", registry=into),
            "outbox_dropped_frames": Counter("hexdispatch_outbox_dropped_frames",
                                             "frames dropped with an overflowing outbox", registry=into),
            "positions_superseded": Counter("hexdispatch_positions_superseded",
                                            "unsent driver positions replaced by a newer one (latest wins)",
                                            registry=into),
            "refused": Counter("hexdispatch_refused", "GPS fixes and orders refused, by code", ("code",),
                               registry=into),
            "loop_guard_waits": Counter("hexdispatch_loop_guard_waits", "frame readers queued behind a busy loop",
                                        registry=into),
            "gc_collections": Counter("hexdispatch_gc_collections", "garbage collections, by generation",
                                      ("generation",), registry=into),
        }
        self.connections = Gauge("hexdispatch_ws_connections", "open websockets, by role", ("role",),
                                 multiprocess_mode="livesum", registry=into)
        self.cells_open = Gauge("hexdispatch_cells_open", "cells the front doors have open",
                                multiprocess_mode="livesum", registry=into)
        self.info = Gauge("hexdispatch_front_door_info", "each front door process", ("gateway", "process"),
                          multiprocess_mode="livesum", registry=into)
        self._synced: dict[tuple, float] = {}
        #: The latest cell load reports (``CellActor.load``) and when they were gathered.
        self.cell_reports: list[dict] = []
        self.cell_reports_at = 0.0
        self.cells = _CellCollector(self)
        self.registry.register(self.cells)
        self._templates: dict[object, str] | None = None

    def route_template(self, scope: dict) -> str:
        """The template of the route that answered ``scope`` (its endpoint), or ``<unmatched>``."""
        if self._templates is None:
            self._templates = route_templates(self.app.routes)
        return self._templates.get(scope.get("endpoint"), UNMATCHED)

    def gc_pause(self, generation: int, seconds: float) -> None:
        self.gc_pauses.labels(str(generation)).observe(seconds)

    def start(self) -> Callable[[], None]:
        """Start the loop-lag probe, the sync and, when this server runs live dispatch, the cell reports;
        return their stop (which, in multiprocess mode, also retires this process's live gauges)."""
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._probe_loop()), loop.create_task(self._sync_loop())]
        if getattr(self.app.state, "gateway", None) is not None:
            tasks.append(loop.create_task(self._gather_cells()))

        def stop() -> None:
            for task in tasks:
                task.cancel()
            if self.multiprocess_dir:
                mark_process_dead(os.getpid(), self.multiprocess_dir)
        return stop

    def sync(self) -> None:
        """Bring the counters and gauges up to the app's state (counters grow by what happened since)."""
        state = self.app.state
        gateway = getattr(state, "gateway", None)
        totals: dict[tuple, float] = {}
        guard = getattr(state, "loop_guard", None)
        if guard is not None:
            totals[("loop_guard_waits",)] = guard.waits
        gc_watch = getattr(state, "gc_watch", None)
        if gc_watch is not None:
            for generation, count in enumerate(gc_watch.collections):
                totals[("gc_collections", str(generation))] = count
        self.info.labels(gateway.id if gateway is not None else "", str(os.getpid())).set(1)
        if gateway is not None:
            stats = gateway.stats
            for direction in ("in", "out"):
                for role in ROLES:
                    totals[(f"frames_{direction}", role)] = stats.get(f"frames_{direction}_{role}", 0)
            for key in ("gps_in", "gps_fast", "closed_behind", "outbox_dropped_frames", "positions_superseded"):
                totals[(key,)] = stats[key]
            for key, count in stats.items():
                if key.startswith("refused_"):
                    totals[("refused", key[len("refused_"):])] = count
            self.connections.labels("driver").set(len(gateway.drivers))
            self.connections.labels("customer").set(
                len({c for followers in gateway.customers.values() for c in followers}))
            feed = getattr(state, "ops_feed", None)
            self.connections.labels("admin").set(len(feed.viewers) if feed is not None else 0)
            self.cells_open.set(len(gateway.cells))
        for key, total in totals.items():
            counter = self.counters[key[0]]
            counter = counter.labels(*key[1:]) if len(key) > 1 else counter
            grown = total - self._synced.get(key, 0)
            if grown > 0:
                counter.inc(grown)
            self._synced[key] = total

    async def _sync_loop(self) -> None:
        while True:
            self.sync()
            await asyncio.sleep(self.sync_s)

    async def _probe_loop(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.loop_probe_s)
            self.loop_lag.observe(max(0.0, time.perf_counter() - started - self.loop_probe_s))

    async def _gather_cells(self) -> None:
        from server.api.admin import cell_loads

        while True:
            try:
                self.cell_reports, _ = await cell_loads()
                self.cell_reports_at = time.time()
            except Exception:
                log.warning("gathering the cells' load reports failed; retrying", exc_info=True)
            await asyncio.sleep(self.cell_report_s)

    def exposition(self) -> bytes:
        """Every figure in the text format: this process's, or in multiprocess mode every worker's added up."""
        self.sync()
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        registry = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(registry, self.multiprocess_dir)
        registry.register(self.cells)
        return generate_latest(registry)


def route_templates(routes: list[BaseRoute]) -> dict[object, str]:
    """Each route's endpoint -> its path template (a mount: ``path/{path}``)."""
    templates: dict[object, str] = {}
    for route in routes:
        if isinstance(route, (Route, WebSocketRoute)):
            templates[route.endpoint] = route.path
        elif isinstance(route, Mount):
            templates[route.app] = route.path + "/{path}"
    return templates


class RequestMetrics:
    """ASGI middleware timing each HTTP request into ``hexdispatch_http_request_duration_seconds``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics: FrontDoorMetrics = scope["app"].state.metrics
            metrics.requests.labels(scope["method"], metrics.route_template(scope), str(status)).observe(
                time.perf_counter() - started)


async def metrics_endpoint(request: Request) -> Response:
    """The Prometheus text exposition of this process."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class _CellCollector:
    """The cells' figures from the latest load reports, read at scrape time; and the GPS fast path's share."""

    def __init__(self, metrics: FrontDoorMetrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        gateway = getattr(self.metrics.app.state, "gateway", None)
        if gateway is None:
            return
        fixes, fast = gateway.stats["gps_in"], gateway.stats["gps_fast"]
        yield GaugeMetricFamily("hexdispatch_gps_fast_path_ratio",
                                "share of the answering process's GPS fixes taken by the fast path (across "
                                "processes: the ratio of the two counters' rates)",
                                value=fast / fixes if fixes else 0.0)
        yield from _cell_metrics(self.metrics.cell_reports, self.metrics.cell_reports_at)


def _cell_metrics(reports: list[dict], at: float):
    yield GaugeMetricFamily("hexdispatch_cell_reports_timestamp_seconds",
                            "when the cells' load reports were last gathered", value=at)
    yield GaugeMetricFamily("hexdispatch_cells_reporting", "cells whose load report was gathered",
                            value=len(reports))
    for key, name, text in (("tick_seconds", "hexdispatch_cell_tick_seconds", "matching tick time, every cell"),
                            ("gps_lag_seconds", "hexdispatch_cell_gps_lag_seconds",
                             "front door receiving a fix to its cell applying it, every cell")):
        merged = merge_histograms([report["histograms"][key] for report in reports if "histograms" in report])
        if merged is not None:
            family = HistogramMetricFamily(name, text)
            buckets = [(_le(bound), count) for bound, count in zip(merged["le"] + [float("inf")],
                                                                    merged["cumulative"])]
            family.add_metric([], buckets, merged["sum"])
            yield family
    drivers = GaugeMetricFamily("hexdispatch_cell_drivers", "drivers held by a cell, by status",
                                labels=["cell", "status"])
    pending = GaugeMetricFamily("hexdispatch_cell_pending_orders", "orders waiting for a driver", labels=["cell"])
    offers = GaugeMetricFamily("hexdispatch_cell_open_offers", "offers sent and not yet answered", labels=["cell"])
    ticks = CounterMetricFamily("hexdispatch_cell_ticks", "matching ticks run", labels=["cell"])
    for report in reports:
        cell = report["cell"]
        for status, count in report.get("drivers", {}).items():
            drivers.add_metric([cell, status], count)
        pending.add_metric([cell], report.get("pending_orders", 0))
        offers.add_metric([cell], report.get("open_offers", 0))
        ticks.add_metric([cell], report.get("ticks", 0))
    yield from (drivers, pending, offers, ticks)


def merge_histograms(reports: list[dict]) -> dict | None:
    """The sum of cumulative histograms with the same bounds (``actors.metrics.Buckets.report``); None if none."""
    if not reports:
        return None
    bounds = reports[0]["le"]
    same = [r for r in reports if r["le"] == bounds]
    return {"le": list(bounds), "cumulative": [sum(column) for column in zip(*(r["cumulative"] for r in same))],
            "sum": sum(r["sum"] for r in same), "count": sum(r["count"] for r in same)}


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
