"""``hexdispatch bench peak``: a peak hour against a running hexdispatch, beside the bare ceiling and the Redis design.

Phases (real clients over loopback, spread over ``--processes`` load processes):

1. **peak**: a simulated city (``clients.city``): ``--drivers`` driver sockets
   sending GPS every ``--gps-interval`` s while they move, take offers and
   deliver; ``--orders-per-minute`` orders, each followed by its customer's
   socket; kitchens cooking. It measures GPS absorbed, GPS-to-actor (the
   cells' own lag figures), GPS-to-customer, order placement,
   placement-to-offer (orders the dispatcher holds on purpose, because the
   food is not ready for a while, are reported apart), matching ticks,
   Postgres writes, CPU and memory per process, and audits every order
   (lost orders, lost status events, double assignments: all must be 0).
2. **stress** (``--stress``): the same city with the GPS rate stepped up
   until latency breaks; reports the knee.
3. **comparison**: the same flood of GPS frames (``--flood-sockets`` sockets
   sending ``--flood-rate`` fixes a second in all, or as fast as the server
   reads) against (a) the bare ceiling, (b) the seeds' Redis design, both
   started here on free ports, and (c) hexdispatch (which must allow that
   many fixes per socket; the default, 1 a second each, is within the
   protocol's limit, and ``--start-server`` raises ``HEXDISPATCH_GPS_RATE``
   for more).
   Each design's figure is frames per CPU-second of its websocket process
   (what one core of its own takes; see :func:`run_flood`).

Writes ``peak.md``, ``peak.json`` and PNG plots under ``--out``; exits 1 when
a target is missed (and says which).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson

from bench import probes
from bench.loadgen import CityJob, FloodJob, LoadRun, Outcome, Step, split
from bench.machine import machine_facts
from clients.city import DEFAULT_CENTER, Kitchen, RoundRobin, Tally, audit, minter, percentiles, random_point, seed_city
from clients.http import ApiClient, stop_process, wait_until_healthy
from server.ratelimit import RateLimits
from server.cli import parser_for

REPO = Path(__file__).resolve().parents[1]
DEFAULT_URL = "http://127.0.0.1:8000"
#: Targets of issue 6 (this 2-core machine, load generator included).
TARGET_GPS_PER_S = 2000
TARGET_GPS_TO_CUSTOMER_P99_MS = 100.0
TARGET_PLACEMENT_TO_OFFER_P99_MS = 100.0
SEEDS_PLACEMENT_TO_OFFER_P99_MS = 500.0
TARGET_SHARE_OF_CEILING = 0.5
TARGET_TIMES_REDIS = 1.5
#: A step keeps up when the server absorbs this share of what is offered...
KEEPS_UP_SHARE = 0.9
#: Fixes per second a socket may send to a server this bench starts, when the comparison's flood asks for more
#: than the protocol's default limit (by default it does not: 10,000 fixes/s over 10,000 sockets).
FLOOD_GPS_RATE = 1000
#: The flood runs this far from the city, in cells of its own.
FLOOD_OFFSET_DEG = 0.5


@dataclass
class System:
    """The hexdispatch under test: its front doors and what we know of its processes."""

    urls: list[str]
    secret: str
    dsn: str | None
    pids: dict[int, str] = field(default_factory=dict)
    """Front-door pids (when the bench started them or was told), for CPU and memory."""
    workers: int = 1
    """Front-door processes behind each URL (``hexdispatch serve --workers``)."""
    stats_file: str | None = None
    """Where the (single) front door started here writes its counters (``HEXDISPATCH_STATS_FILE``)."""

    @property
    def admin_token(self) -> str:
        return minter(self.secret)("admin", "bench-peak")

    @property
    def database(self) -> str | None:
        return self.dsn.rsplit("/", 1)[-1].split("?")[0] if self.dsn else None


@dataclass
class CityRun:
    """One run of the city: the load processes' outcomes, the merged tally, and the server samples."""

    go_at: float
    outcomes: list[Outcome]
    tally: Tally
    samples: list[probes.Sample]
    progress: list[tuple[int, dict]]
    sampler_errors: dict
    ended_at: float


# --------------------------------------------------------------------------- the system under test


def secret_from_environment() -> str:
    """The local server's JWT secret (``HEXDISPATCH_JWT_SECRET`` or ``.hexdispatch/jwt_secret``)."""
    from server.config import Settings

    return Settings.from_env().resolved_jwt_secret()


def listening_pids(urls: list[str]) -> dict[int, str]:
    """The processes listening on the URLs' ports on this machine (best effort)."""
    import psutil
    from urllib.parse import urlsplit

    ports = {urlsplit(url).port: i for i, url in enumerate(urls)}
    found: dict[int, str] = {}
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port in ports and conn.pid:
                found[conn.pid] = f"front door {ports[conn.laddr.port] + 1}" if len(urls) > 1 else "front door"
    except psutil.AccessDenied:
        pass
    return found


@contextlib.contextmanager
def started_system(args) -> Iterator[System]:
    """``hexdispatch serve`` (``--front-doors`` worker processes on one port) in a temporary directory, on a
    fresh database."""
    from bench.catalog import admin_dsn, free_port, fresh_database

    with admin_dsn(args.database_url) as (admin, _), fresh_database(admin, keep=False) as dsn, \
            tempfile.TemporaryDirectory(prefix="hexdispatch-peak-") as home:
        secret = secrets.token_urlsafe(48)
        env = {**os.environ, "DATABASE_URL": dsn, "HEXDISPATCH_JWT_SECRET": secret, "PYTHONPATH": str(REPO),
               "HEXDISPATCH_HOME": str(Path(home) / ".hexdispatch")}
        env.pop("RAY_ADDRESS", None)
        per_socket = flood_per_socket(args)
        if per_socket is None or per_socket > RateLimits().gps.rate:
            env["HEXDISPATCH_GPS_RATE"] = str(FLOOD_GPS_RATE)  # the comparison floods; the city stays far below
        env.update(args.server_env)
        if args.front_doors > 1:
            env["REDIS_URL"] = args.redis_url  # what the front doors share (positions, sessions, rate limits)
        else:
            env.pop("REDIS_URL", None)
        stats_file = str(Path(home) / "front-door-stats.json") if args.front_doors == 1 else None
        if stats_file:  # a flooded front door answers HTTP late: its counters come from a file instead
            env["HEXDISPATCH_STATS_FILE"] = stats_file
        port = free_port()
        command = [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--workers",
                   str(args.front_doors), "--log-level", "warning"]
        process = subprocess.Popen(command, cwd=home, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_healthy(url, process, timeout_s=180)
            yield System([url], secret, dsn, {process.pid: "front door"}, args.front_doors, stats_file)
        finally:
            stop_process(process, timeout_s=60)


@contextlib.contextmanager
def system_under_test(args) -> Iterator[System]:
    if args.start_server:
        with started_system(args) as system:
            yield system
        return
    urls = [url.rstrip("/") for url in (args.url or [DEFAULT_URL])]
    for url in urls:
        wait_until_healthy(url, timeout_s=30)
    yield System(urls, args.secret or secret_from_environment(), args.database_url or os.environ.get("DATABASE_URL"),
                 listening_pids(urls), args.front_doors, args.stats_file)


def wait_until_responsive(system: System, timeout_s: float = 120.0) -> None:
    """After an overload: wait until every front door answers its admin counters promptly again."""
    import httpx

    headers = {"authorization": f"Bearer {system.admin_token}"}
    deadline = time.monotonic() + timeout_s
    for url in system.urls:
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/v1/admin/stats", headers=headers, timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(1)


# --------------------------------------------------------------------------- load and samples


def wait_until_cells_answer(system: System, timeout_s: float = 300.0) -> None:
    """Wait until the drivers' fixes have reached cells and every cell actor answers: a cell's first start
    (its process, imports, compiling its kernels) takes seconds of CPU, many on a loaded machine, and
    orders and fixes sent to cells still starting would measure their start, not the peak."""
    import httpx

    headers = {"authorization": f"Bearer {system.admin_token}"}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = httpx.get(f"{system.urls[0]}/v1/admin/cells", headers=headers, timeout=30)
        except httpx.HTTPError:
            response = None
        if response is not None and 400 <= response.status_code < 500:
            raise RuntimeError(f"GET /v1/admin/cells: {response.status_code} {response.text}")
        if response is not None and response.status_code == 200:
            answer = response.json()
            holding = sum(sum(cell["drivers"].values()) for cell in answer["cells"])
            if holding and not answer["unanswered"]:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the city's cells did not all answer within {timeout_s:g} s")
        time.sleep(0.5)


def sampling_interval(window_s: float) -> float:
    """How often to sample so that even a short measured window holds a few samples."""
    return max(0.2, min(1.0, window_s / 4))


def sampler_for_system(system: System, load: LoadRun | None, every_s: float = 1.0) -> probes.Sampler:
    roots = dict(system.pids)
    roots.setdefault(os.getpid(), "bench")  # unless the front door runs in this process (the tests)
    if load is not None:
        roots.update({pid: f"load generator {i + 1}" for i, pid in enumerate(load.pids())})
    return probes.Sampler(
        counters=(probes.hexdispatch_stats_file(system.stats_file) if system.stats_file
                  else probes.hexdispatch_counters(system.urls, system.admin_token, system.workers)),
        cells=probes.hexdispatch_cells(system.urls[0], system.admin_token),
        postgres=probes.PostgresProbe(system.dsn) if system.dsn else None,
        processes=probes.ProcessProbe(roots, postgres_db=system.database, redis=len(system.urls) > 1,
                                      cell_actors=not system.pids),
        every_s=every_s,
    )


def offered_rate(progress: list[tuple[int, dict]], start: float, end: float) -> float | None:
    """GPS frames per second the load processes sent between ``start`` and ``end`` (from their reports)."""
    total, span = 0.0, 0.0
    for index in {i for i, _ in progress}:
        points = [(p["at"], p["gps_sent"]) for i, p in progress if i == index and start <= p["at"] <= end]
        if len(points) >= 2:
            total += (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
            span = max(span, points[-1][0] - points[0][0])
    return total if span > 0 else None


def per_second(progress: list[tuple[int, dict]], samples: list[probes.Sample], key, origin: float) -> dict:
    """Offered (load processes) and absorbed (``key`` of the samples) per second, for the throughput plot."""
    absorbed = sorted((s.at - origin, key(s)) for s in samples if key(s) is not None)
    absorbed_rate = [((t0 + t1) / 2, (v1 - v0) / (t1 - t0)) for (t0, v0), (t1, v1) in zip(absorbed, absorbed[1:])
                     if t1 > t0]
    sent: dict[float, float] = {}
    for index in {i for i, _ in progress}:
        points = [(p["at"] - origin, p["gps_sent"]) for i, p in progress if i == index]
        for (t0, v0), (t1, v1) in zip(points, points[1:]):
            if t1 > t0:
                bucket = round((t0 + t1) / 2)
                sent[bucket] = sent.get(bucket, 0.0) + (v1 - v0) / (t1 - t0)
    return {"absorbed": absorbed_rate, "offered": sorted(sent.items())}


# --------------------------------------------------------------------------- the city


def seed(args, system: System) -> list[Kitchen]:
    rng = random.Random(args.seed)
    prep = [int(p) for p in str(args.prep_minutes).split(",")]
    print(f"seeding {args.restaurants} restaurants ...", flush=True)
    return asyncio.run(seed_city(RoundRobin(system.urls), minter(system.secret), rng, (args.lat, args.lng),
                                 args.radius_m, args.restaurants, prep))


def city_jobs(args, system: System, kitchens: list[Kitchen], steps: list[Step], duration_s: float,
              tag: str, progress_every_s: float) -> list[CityJob]:
    rng = random.Random(f"{args.seed}-{tag}")
    center = (args.lat, args.lng)
    run_id = secrets.token_hex(3)
    drivers = [(f"{tag}-{run_id}-{i}", *random_point(rng, center, args.radius_m)) for i in range(args.drivers)]
    jobs = []
    for index, (first, size) in enumerate(split(len(drivers), args.processes)):
        share = [Step(s.at_s, s.gps_interval_s, s.orders_per_minute / args.processes) for s in steps]
        jobs.append(CityJob(index, system.urls, system.secret, kitchens, drivers[first:first + size], share,
                            duration_s, center, args.radius_m, args.speed_kmh / 3.6, args.accept_rate, args.seed,
                            progress_every_s=progress_every_s))
    return jobs


def city_sampling(args) -> float:
    return sampling_interval(min(args.duration - args.warmup, args.stress_step_seconds))


#: Without a drain, how long the load goes on after its steps for the orders placed to get their first offer.
OFFER_GRACE_S = 30.0


def run_city(args, system: System, kitchens: list[Kitchen], steps: list[Step], duration_s: float, name: str,
             drain_s: float, stop_when=None, every=None, sample_every_s: float | None = None) -> CityRun:
    """Connect the drivers, wait for their cells, run the steps, drain open orders (up to ``drain_s``; without a
    drain, until the orders placed have their first offer, up to ``OFFER_GRACE_S``), collect everything.

    ``every()`` runs about once a second while the steps run (from the moment the load starts);
    ``sample_every_s`` (default: from the peak's window) paces the load's reports and the server samples.
    """
    sample_every_s = sample_every_s or city_sampling(args)
    load = LoadRun(city_jobs(args, system, kitchens, steps, duration_s, name, sample_every_s), name)
    sampler = None
    try:
        load.start(args.drivers, before_go=lambda: wait_until_cells_answer(system))
        sampler = sampler_for_system(system, load, sample_every_s).start()

        def postfix(progress: dict[int, dict]) -> str:
            return (f"placed={sum(p['placed'] for p in progress.values())} "
                    f"open={sum(p['open'] for p in progress.values())}")

        load.watch(duration_s, until=(lambda _: stop_when(load, sampler)) if stop_when else None, every=every,
                   postfix=postfix)
        if drain_s > 0:
            load.watch(drain_s, postfix=postfix, until=lambda progress: all(
                not p["placing"] and p["open"] == 0 for p in progress.values()) and len(progress) == len(load.jobs))
            time.sleep(2)  # the last status events on their way to the customers
        elif stop_when is None:
            # No drain: still let the orders placed so far get their first offer (up to OFFER_GRACE_S), or the
            # slowest offers, those of the last orders, would be left out of placement-to-offer. An offer made
            # to a driver of another load process is not seen by the placing one: then the grace runs out.
            load.watch(OFFER_GRACE_S, postfix=postfix, until=lambda progress: all(
                not p["placing"] and p["unoffered"] == 0 for p in progress.values())
                and len(progress) == len(load.jobs))
        outcomes = load.finish()
    except BaseException:
        load.abort()
        raise
    finally:
        samples = sampler.stop() if sampler is not None else []
    tally = Tally()
    for outcome in outcomes:
        tally.merge(outcome.tally)
    return CityRun(load.go_at, outcomes, tally, samples, load.history, sampler.errors if sampler else {}, time.time())


def offer_latencies(tally: Tally) -> dict[str, list[float]]:
    """Placement to first offer, split by why the cell kept the order pending (the offer's ``waited_s``).

    ``free_ms``: orders that waited only to be considered (``queued``): a
    driver was free and nothing was held back on purpose; the target applies
    to these. ``deliberate_s``: orders held for a driver about to be free or
    deferred until their food is nearly ready (``held``, ``deferred``), with
    those waits in ``held_s`` and ``deferred_s``. ``no_driver_s``: the rest,
    which waited because no driver of the cell could take them
    (``unmatched_s``). ``all_ms``: every offered order. ``free_queued_ms``: of
    ``free_ms``, placement until the cell decided (placement's transaction,
    the hand-over to the cell, the tick); the rest is the offer's way out.
    """
    from dispatch.cell import DELIBERATE_WAITS

    out: dict[str, list[float]] = {"free_ms": [], "free_queued_ms": [], "all_ms": [], "deliberate_s": [],
                                   "held_s": [], "deferred_s": [], "no_driver_s": [], "unmatched_s": []}
    for order_id, placed in tally.placed_at.items():
        if order_id not in tally.first_offer:
            continue
        offered, waited = tally.first_offer[order_id]
        latency_s = offered - placed
        out["all_ms"].append(latency_s * 1000)
        if any(waited.get(reason, 0.0) > 0 for reason in DELIBERATE_WAITS):
            out["deliberate_s"].append(latency_s)
            out["held_s"].append(waited.get("held", 0.0))
            out["deferred_s"].append(waited.get("deferred", 0.0))
        elif waited.get("unmatched", 0.0) > 0:
            out["no_driver_s"].append(latency_s)
            out["unmatched_s"].append(waited["unmatched"])
        else:
            out["free_ms"].append(latency_s * 1000)
            out["free_queued_ms"].append(waited.get("queued", 0.0) * 1000)
    return out


def cell_figures(samples: list[probes.Sample], start: float, end: float) -> dict:
    """GPS-to-actor lag and tick times, between ``start`` and ``end``, of the cells that were receiving fixes."""
    lag = {"p50": [], "p95": [], "p99": []}
    tick = {"p50": [], "p99": [], "last": []}
    series = []
    previous: dict[str, int] = {}
    cells_seen = set()
    for sample in samples:
        if not sample.cells:
            continue
        for cell in sample.cells:
            fixes = cell.get("gps_fixes", 0)
            active = cell["cell"] in previous and fixes > previous[cell["cell"]]
            previous[cell["cell"]] = fixes
            if not active or not start <= sample.at <= end:
                continue
            cells_seen.add(cell["cell"])
            for q in lag:
                lag[q].append(cell["gps_lag_ms"][q])
            for q in tick:
                tick[q].append(cell["tick_ms"][q])
            series.append((sample.at, cell["gps_lag_ms"]["p50"], cell["gps_lag_ms"]["p95"], cell["gps_lag_ms"]["p99"]))
    if not series:
        return {"cells": 0}
    return {
        "cells": len(cells_seen), "readings": len(series),
        "gps_to_actor_ms": {"p50": float(np.median(lag["p50"])), "p95": float(np.median(lag["p95"])),
                            "p99": float(np.median(lag["p99"])), "worst_p99": float(np.max(lag["p99"]))},
        "tick_ms": {"p50": float(np.median(tick["p50"])), "p99": float(np.median(tick["p99"])),
                    "worst_p99": float(np.max(tick["p99"]))},
        "_series": series,
    }


def postgres_figures(samples: list[probes.Sample]) -> dict | None:
    commits = probes.rate(samples, probes.postgres_total("xact_commit"))
    if commits is None:
        return None
    return {"commits_per_s": commits,
            "rows_written_per_s": probes.rate(samples, probes.postgres_total("tup_inserted", "tup_updated",
                                                                              "tup_deleted")),
            "rows_inserted_per_s": probes.rate(samples, probes.postgres_total("tup_inserted")),
            "rows_updated_per_s": probes.rate(samples, probes.postgres_total("tup_updated"))}


def reading_span(samples: list[probes.Sample], start: float, end: float, has) -> tuple[float, float]:
    """``(start, end)`` widened to the last sample for which ``has(sample)`` at or before ``start`` and the first
    at or after ``end``. A reading covers the time before it (a cumulative counter, the cells' percentiles), and a
    loaded machine may leave a short window with one reading or none of its own."""
    times = [sample.at for sample in samples if has(sample)]
    return (max((t for t in times if t <= start), default=start), min((t for t in times if t >= end), default=end))


def in_window(pairs, start: float, end: float) -> list[float]:
    return [value for at, value in pairs if start <= at <= end]


def run_peak(args, system: System, kitchens: list[Kitchen]) -> dict:
    """The realistic peak hour: steady GPS and orders, then drain and audit."""
    steps = [Step(0.0, args.gps_interval, args.orders_per_minute)]
    city = run_city(args, system, kitchens, steps, args.duration, "peak", args.drain)
    start, end = city.go_at + args.warmup, city.go_at + args.duration
    samples = probes.window(city.samples, start, end)
    admin = ApiClient(system.urls[0], system.admin_token)

    async def audited() -> dict:
        try:
            return await audit(admin, list(city.tally.placed_at), city.tally.seen_seqs, city.tally.followed_until)
        finally:
            await admin.aclose()

    print("auditing every order against order_events ...", flush=True)
    counts = asyncio.run(audited())
    # Orders placed in the warm-up are left out, as every other latency here is.
    placed = {o: t for o, t in city.tally.placed_at.items() if start <= t <= end}
    offers = offer_latencies(Tally(placed_at=placed, first_offer=city.tally.first_offer))
    cells = cell_figures(city.samples, start, reading_span(city.samples, start, end, lambda s: s.cells)[1])
    tally = city.tally
    failures = [f for o in city.outcomes for f in o.failures]
    return {
        "window_s": end - start,
        "drivers": args.drivers, "gps_interval_s": args.gps_interval, "orders_per_minute": args.orders_per_minute,
        "driver_sockets": sum(o.connected for o in city.outcomes),
        "gps_offered_per_s": offered_rate(city.progress, start, end),
        "gps_absorbed_per_s": probes.rate(samples, probes.counter("gps")),
        "gps_applied_by_cells_per_s": probes.cells_rate(samples, "gps_fixes"),
        "gps_to_customer_ms": percentiles(in_window(tally.gps_to_customer, start, end)),
        "gps_to_front_door_ms": percentiles(in_window(tally.gps_to_front_door, start, end)),
        "gps_to_actor_ms": cells.get("gps_to_actor_ms"),
        "tick_ms": cells.get("tick_ms"),
        "cells_active": cells.get("cells", 0),
        "order_placement_ms": percentiles(in_window(tally.placement, start, end)),
        "placement_to_offer_ms": percentiles(offers["free_ms"]),
        "placement_to_decision_ms": percentiles(offers["free_queued_ms"]),
        "placement_to_offer_all_ms": percentiles(offers["all_ms"]),
        "deliberate_waits": {"count": len(offers["deliberate_s"]),
                             "placement_to_offer_s": percentiles(offers["deliberate_s"]),
                             "held_s": percentiles(offers["held_s"]),
                             "deferred_s": percentiles(offers["deferred_s"])},
        "no_driver_waits": {"count": len(offers["no_driver_s"]),
                            "placement_to_offer_s": percentiles(offers["no_driver_s"]),
                            "unmatched_s": percentiles(offers["unmatched_s"])},
        "postgres": postgres_figures(probes.window(city.samples, *reading_span(city.samples, start, end,
                                                                                lambda s: s.postgres))),
        "processes": probes.process_usage(samples),
        "orders_placed": len(tally.placed_at), "orders_refused": tally.refused_placements,
        "offered_orders": len(tally.first_offer),
        "delivered": counts["delivered"], "cancelled": counts["cancelled"], "in_flight": counts["in_flight"],
        # Stuck after the drain is lost; without a drain (--drain 0) an open order is only unfinished.
        "lost_orders": counts["missing"] + (counts["in_flight"] if args.drain > 0 else 0),
        "lost_status_events": counts["lost_status_events"],
        "double_assignments": counts["double_assigned"] + tally.double_bookings,
        "declined_offers": tally.declines, "driver_errors": tally.driver_errors,
        "driver_job_failures": len(tally.job_failures), "customer_failures": len(failures),
        "failure_samples": (tally.job_failures + failures)[:5],
        "probe_failures": city.sampler_errors,
        "_plot": {"gps_to_customer": in_window(tally.gps_to_customer, start, end), "offers": offers,
                  "placement": [ms for _, ms in tally.placement], "cells": cells.get("_series", []),
                  "throughput": per_second(city.progress, city.samples, probes.counter("gps"), city.go_at)},
    }


# --------------------------------------------------------------------------- stress


def stress_steps(args) -> list[Step]:
    """GPS interval divided by each multiplier (never under the protocol's 0.5 s); orders stay at the peak rate.

    The steps start after ``--warmup`` s at the peak's own rate (not measured).
    """
    from server.ratelimit import RateLimits

    steps, at = [], args.warmup
    for multiplier in (float(m) for m in args.stress_steps.split(",")):
        interval = max(1.0 / RateLimits().gps.rate, args.gps_interval / multiplier)
        if steps and interval >= steps[-1].gps_interval_s:
            continue
        steps.append(Step(at, interval, args.orders_per_minute))
        at += args.stress_step_seconds
    return steps


def run_stress(args, system: System, kitchens: list[Kitchen]) -> dict:
    """Step the GPS rate up until the server stops keeping up; the knee is the last step within every target."""
    steps = stress_steps(args)
    duration = args.warmup + len(steps) * args.stress_step_seconds
    broken_at: list[float] = []

    def broken(load: LoadRun, sampler: probes.Sampler) -> bool:
        """Stop the ramp once a whole step has run without keeping up."""
        elapsed = time.time() - load.go_at - args.warmup
        index = int(elapsed // args.stress_step_seconds)
        if index <= 0 or broken_at:
            return bool(broken_at)
        step_start = load.go_at + args.warmup + (index - 1) * args.stress_step_seconds
        figures = step_figures(load.history, sampler.samples, step_start, step_start + args.stress_step_seconds,
                               args.keeps_up_lag_ms)
        if not figures["keeps_up"]:
            broken_at.append(step_start)
        return bool(broken_at)

    warmup = Step(0.0, args.gps_interval, args.orders_per_minute)
    city = run_city(args, system, kitchens, [warmup, *steps], duration, "stress", drain_s=0, stop_when=broken)
    results = []
    for number, step in enumerate(steps):
        start = city.go_at + step.at_s + min(5.0, args.stress_step_seconds / 4)
        end = city.go_at + step.at_s + args.stress_step_seconds
        if start >= city.ended_at:
            break
        figures = step_figures(city.progress, city.samples, start, min(end, city.ended_at), args.keeps_up_lag_ms)
        if figures["gps_offered_per_s"] is None:
            break
        placed = {o: t for o, t in city.tally.placed_at.items() if start <= t <= end}
        step_tally = Tally(placed_at=placed, first_offer=city.tally.first_offer)
        offers = offer_latencies(step_tally)
        figures.update(step=number + 1, gps_interval_s=step.gps_interval_s,
                       gps_to_customer_ms=percentiles(in_window(city.tally.gps_to_customer, start, end)),
                       placement_to_offer_ms=percentiles(offers["free_ms"]))
        figures["within_targets"] = bool(
            figures["keeps_up"]
            and figures["gps_to_customer_ms"].get("p99", 0.0) < TARGET_GPS_TO_CUSTOMER_P99_MS
            and figures["placement_to_offer_ms"].get("p99", 0.0) < TARGET_PLACEMENT_TO_OFFER_P99_MS)
        results.append(figures)
    knee = None
    for figures in results:
        if not figures["within_targets"]:
            break
        knee = figures
    return {"step_seconds": args.stress_step_seconds, "warmup_s": args.warmup, "steps": results,
            "knee": {k: knee[k] for k in ("step", "gps_interval_s", "gps_offered_per_s", "gps_absorbed_per_s")}
            if knee else None,
            "stopped_early": bool(broken_at),
            "_plot": {"throughput": per_second(city.progress, city.samples, probes.counter("gps"), city.go_at)}}


def step_figures(progress, samples: list[probes.Sample], start: float, end: float, max_lag_ms: float) -> dict:
    """Offered and absorbed GPS and the cells' lag over one step; whether the server kept up."""
    window = probes.window(samples, start, end)
    offered = offered_rate(progress, start, end)
    absorbed = probes.rate(window, probes.counter("gps"))
    cells = cell_figures(samples, start, end)
    lag = (cells.get("gps_to_actor_ms") or {}).get("p99")
    if lag is None:  # a flooded front door did not answer for its cells: its own view of their lag
        seen = [s.counters["gps_to_cell_ms"] for s in window if s.counters and "gps_to_cell_ms" in s.counters]
        lag = float(np.percentile(seen, 99)) if seen else None
    missing = sum(1 for s in window if not s.slow and s.counters is None)
    keeps_up = bool(offered and absorbed is not None and absorbed >= KEEPS_UP_SHARE * offered
                    and missing == 0 and (lag is None or lag <= max_lag_ms))
    return {"gps_offered_per_s": offered, "gps_absorbed_per_s": absorbed, "gps_to_actor_p99_ms": lag,
            "probe_timeouts": missing, "keeps_up": keeps_up}


# --------------------------------------------------------------------------- comparison


def flood_per_socket(args) -> float | None:
    """Fixes a second each socket of the comparison sends; None: as fast as the server reads."""
    return args.flood_rate / args.flood_sockets if args.flood_rate else None


def flood_center(args) -> tuple[float, float]:
    return args.lat + FLOOD_OFFSET_DEG, args.lng


def open_flood_kitchen(args, system: System) -> None:
    """A restaurant at the flood's centre: hexdispatch serves drivers only around restaurants (its service
    area, ``dispatch.service_area``), and the flood runs in cells of its own."""
    async def create() -> None:
        owner = ApiClient(system.urls[0], minter(system.secret)("restaurant", f"flood-kitchen-{secrets.token_hex(3)}"))
        try:
            await owner.create_restaurant(name="Flood kitchen", address="bench", latitude=flood_center(args)[0],
                                          longitude=flood_center(args)[1], prep_minutes=1)
        finally:
            await owner.aclose()

    asyncio.run(create())


def flood_jobs(args, urls: list[str], secret: str, tag: str, following: float) -> list[FloodJob]:
    center = flood_center(args)
    run_id, prefix = secrets.token_hex(3), tag.replace(" ", "-")
    jobs = []
    for index, (first, size) in enumerate(split(args.flood_sockets, args.processes)):
        jobs.append(FloodJob(index, urls, secret, size, first_driver=first, id_prefix=f"{prefix}-{run_id}",
                             followers=int(size * following), center=center, seed=args.seed,
                             progress_every_s=sampling_interval(args.flood_seconds),
                             rate_per_socket=flood_per_socket(args)))
    return jobs


#: Per design: the websocket process that takes the frames, and the processes helping it (the ratios'
#: figure is the first's frames per CPU-second; the second's CPU is reported beside it).
DESIGN_PROCESSES = {"ceiling": ("ceiling", ()), "redis design": ("redis design", ("redis",)),
                    "hexdispatch": ("front door", ("ray: cell actors",))}


def run_flood(args, name: str, jobs: list[FloodJob], sampler: probes.Sampler) -> dict:
    """Send ``name`` the flood (``--flood-rate`` fixes/s, or as fast as it reads); what it absorbed over the
    measured window, and what that cost its websocket process in CPU.

    The designs share two cores with the load generator, so how many frames a second one absorbs
    depends on the share of the CPU the scheduler gives it. Frames per CPU-second of its websocket
    process (``frames_per_core_s``: what one core of its own would take) does not, and the ratios
    compare that. For hexdispatch the figures count only while its cells keep up (their GPS lag
    p99 within ``--keeps-up-lag-ms``): reading frames faster than the cells take the fixes would not
    be absorbing them.
    """
    load = LoadRun(jobs, f"compare: {name}")
    try:
        load.start(sum(j.sockets + j.followers for j in jobs))
        for i, pid in enumerate(load.pids()):
            sampler.processes.add(pid, f"load generator {i + 1}")
        sampler.start()
        start, end = load.go_at + args.flood_warmup, load.go_at + args.flood_warmup + args.flood_seconds

        def postfix(progress: dict[int, dict]) -> str:
            return f"sent={sum(x['gps_sent'] for x in progress.values()):,}"

        load.watch(max(0.0, start - time.time()), postfix=postfix)
        clock = probes.CpuClock(sampler.processes)
        load.watch(max(0.0, end - time.time()), postfix=postfix)
        cores = clock.cores()
        figures = step_figures(load.history, sampler.samples, start, end, args.keeps_up_lag_ms)
        outcomes = load.finish()
    except BaseException:
        load.abort()
        raise
    finally:
        samples = sampler.stop()
    tally = Tally()
    for outcome in outcomes:
        tally.merge(outcome.tally)
    absorbed = figures["gps_absorbed_per_s"] or 0.0
    lag = figures["gps_to_actor_p99_ms"]
    keeps_up = lag is None or lag <= args.keeps_up_lag_ms
    usage = probes.process_usage(probes.window(samples, start, end))
    cost = cpu_cost(cores, *DESIGN_PROCESSES[name], absorbed if keeps_up else 0.0)
    return {
        "target": name, "sockets": sum(j.sockets for j in jobs), "followers": sum(j.followers for j in jobs),
        "gps_sent_per_s": figures["gps_offered_per_s"], "most_absorbed_per_s": absorbed,
        "gps_to_actor_p99_ms": lag, "keeps_up": keeps_up, "frames_per_s": absorbed if keeps_up else 0.0, **cost,
        "gps_to_customer_ms": percentiles(ms for _, ms in tally.gps_to_customer) if tally.gps_to_customer else None,
        "processes": usage, "probe_failures": sampler.errors,
        "_plot": per_second(load.history, samples, probes.counter("gps"), load.go_at),
    }


def cpu_cost(used: dict[str, float], process: str, helpers: tuple[str, ...], frames_per_s: float) -> dict:
    """CPU (cores, from ``used``: cores per process group over the window) of the design's websocket
    process and of its helpers; frames per CPU-second of the first, and microseconds of CPU per frame of
    each. Several front doors ("front door 1", ...) add up."""
    def cores(group: str) -> float | None:
        entries = [value for name, value in used.items() if name == group or name.startswith(group + " ")]
        return sum(entries) if entries else None

    own = cores(process)
    helping = sum(c for c in map(cores, helpers) if c is not None)
    per_core = frames_per_s / own if own and frames_per_s else None
    return {"process_cores": own, "helper_cores": round(helping, 3),
            "frames_per_core_s": per_core,
            "cpu_us_per_frame": 1e6 / per_core if per_core else None,
            "helper_cpu_us_per_frame": helping * 1e6 / frames_per_s if frames_per_s else None}


def run_baseline(args, module: str, name: str, system: System, following: float) -> dict:
    """Flood a baseline started here on a free port."""
    from bench.catalog import free_port
    from bench.baselines import running

    env = {"HEXDISPATCH_JWT_SECRET": system.secret, "REDIS_URL": args.redis_url,
           "REDIS_PREFIX": f"hexdispatch-bench:{secrets.token_hex(4)}:"}
    with running(module, free_port(), env) as (url, process, stats_file):
        jobs = flood_jobs(args, [url], system.secret, name, following)
        sampler = probes.Sampler(counters=probes.baseline_counters(stats_file),
                                 every_s=sampling_interval(args.flood_seconds),
                                 processes=probes.ProcessProbe({**system.pids, process.pid: name,
                                                                os.getpid(): "bench"}, redis="redis" in module))
        return run_flood(args, name, jobs, sampler)


COMPARED = ("ceiling", "redis_design", "hexdispatch")


def run_comparison(args, system: System) -> dict:
    """The same GPS flood against the bare ceiling, the Redis design and hexdispatch; the ratios.

    hexdispatch must allow that many fixes per socket (``HEXDISPATCH_GPS_RATE``;
    ``--start-server`` raises it when the flood asks for more than the default), or its flood measures its
    rate limiter.
    """
    results: dict = {}
    if "ceiling" in args.compare:
        results["ceiling"] = run_baseline(args, "bench.baselines.ceiling", "ceiling", system, 0.0)
    if "redis_design" in args.compare:
        results["redis_design"] = run_baseline(args, "bench.baselines.redis_design", "redis design", system,
                                               args.flood_following)
    if "hexdispatch" in args.compare:
        wait_until_responsive(system)
        open_flood_kitchen(args, system)
        jobs = flood_jobs(args, system.urls, system.secret, "flood", 0.0)
        results["hexdispatch"] = run_flood(args, "hexdispatch", jobs,
                                           sampler_for_system(system, None, sampling_interval(args.flood_seconds)))
        wait_until_responsive(system)

    def ratio(over: str, under: str) -> float | None:
        if over not in results or under not in results or not results[under]["frames_per_core_s"]:
            return None
        return (results[over]["frames_per_core_s"] or 0.0) / results[under]["frames_per_core_s"]

    results["ratios"] = {"hexdispatch_over_ceiling": ratio("hexdispatch", "ceiling"),
                         "hexdispatch_over_redis_design": ratio("hexdispatch", "redis_design"),
                         "redis_design_over_ceiling": ratio("redis_design", "ceiling")}
    results["max_lag_ms"] = args.keeps_up_lag_ms
    results["rate"] = args.flood_rate or None
    return results


# --------------------------------------------------------------------------- command line


def environment(args, system: System) -> dict:
    return {**machine_facts(), "front_doors": system.urls,
            "server_started_by_bench": bool(args.start_server), "load_processes": args.processes}


def add_city_arguments(parser: argparse.ArgumentParser, title: str, drivers: int = 10_000,
                       orders_per_minute: float = 500, drain_s: float = 600, processes: int = 3,
                       restaurants: int = 200, radius_m: float = 5000, prep_minutes: str = "1,1,1,3"):
    """The simulated city's options (``bench peak`` and ``bench chaos``), in a group named ``title``."""
    load = parser.add_argument_group(title)
    load.add_argument("--drivers", type=int, default=drivers, help="driver sockets")
    load.add_argument("--gps-interval", type=float, default=5.0, help="seconds between a driver's fixes")
    load.add_argument("--orders-per-minute", type=float, default=orders_per_minute, help="order arrival rate")
    load.add_argument("--drain", type=float, default=drain_s, help="most seconds to let open orders finish (0: none; the load still goes on up to "
                      f"{OFFER_GRACE_S:g} s for the orders placed to get their first offer)")
    load.add_argument("--processes", type=int, default=processes, help="load-generator processes")
    load.add_argument("--restaurants", type=int, default=restaurants, help="kitchens seeded")
    load.add_argument("--radius-m", type=float, default=radius_m, help="radius of the simulated city")
    load.add_argument("--prep-minutes", default=prep_minutes, help="kitchens' prep times, cycled over restaurants")
    load.add_argument("--speed-kmh", type=float, default=36, help="drivers' road speed")
    load.add_argument("--accept-rate", type=float, default=0.9, help="share of offers drivers accept")
    load.add_argument("--lat", type=float, default=DEFAULT_CENTER[0], help="the city's centre")
    load.add_argument("--lng", type=float, default=DEFAULT_CENTER[1], help="the city's centre")
    load.add_argument("--seed", type=int, default=1, help="random seed of the city")
    return load


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = parser_for("hexdispatch bench peak", __doc__)
    where = parser.add_argument_group("the server")
    where.add_argument("--url", action="append", metavar="URL",
                       help=f"a running front door; repeat for several (default {DEFAULT_URL})")
    where.add_argument("--start-server", action="store_true",
                       help="start `hexdispatch serve` in a temporary directory on a fresh database")
    where.add_argument("--front-doors", type=int, default=1,
                       help="with --start-server: front-door processes (`serve --workers N`, sharing Redis); with "
                            "--url: processes behind each URL (their counters are gathered over several calls)")
    where.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                       help="with --start-server: an environment variable for the server (repeatable), "
                            "e.g. RAY_worker_niceness=0")
    where.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                       help="Postgres: where --start-server creates its database, else the server's own (for "
                            "Postgres figures); default DATABASE_URL")
    where.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
                       help="Redis of the Redis design (and of several front doors)")
    where.add_argument("--secret", help="the server's JWT secret (default: as `hexdispatch token` finds it)")
    where.add_argument("--stats-file", help="with --url: the front door's HEXDISPATCH_STATS_FILE, to read its counters "
                                            "from while a flood keeps it from answering HTTP promptly")
    load = add_city_arguments(parser, "the peak hour")
    load.add_argument("--duration", type=float, default=120, help="seconds of the measured peak")
    load.add_argument("--warmup", type=float, default=10, help="first seconds of the peak left out of the figures")
    phases = parser.add_argument_group("phases")
    phases.add_argument("--no-peak", action="store_true", help="skip the peak hour")
    phases.add_argument("--stress", action="store_true", help="ramp the GPS rate until latency breaks")
    phases.add_argument("--stress-steps", default="1,1.5,2,3,4,5,6,8,10",
                        help="multipliers of the peak's GPS rate (capped by the protocol's 2 fixes/s a driver)")
    phases.add_argument("--stress-step-seconds", type=float, default=20)
    phases.add_argument("--no-compare", action="store_true", help="skip the ceiling / Redis design comparison")
    phases.add_argument("--flood-sockets", type=int, help="driver sockets of the comparison (default --drivers)")
    phases.add_argument("--flood-rate", type=float, default=10_000,
                        help="fixes a second the comparison's sockets send in all (0: as fast as the server reads)")
    phases.add_argument("--flood-warmup", type=float, default=15, help="first seconds of each flood left out")
    phases.add_argument("--flood-seconds", type=float, default=15, help="measured seconds of each flood")
    phases.add_argument("--compare", default=",".join(COMPARED),
                        help="which of the three the comparison floods (comma-separated)")
    phases.add_argument("--keeps-up-lag-ms", type=float, default=2000.0,
                        help="a stress step or the hexdispatch flood keeps up while the cells' GPS lag p99 stays "
                             "within this (a stress step also needs >= 90%% of the offered fixes absorbed)")
    phases.add_argument("--flood-following", type=float, default=0.15,
                        help="share of the Redis design's drivers on an order a customer follows")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "peak")
    out.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.compare = [name.strip() for name in args.compare.split(",") if name.strip()]
    if unknown := set(args.compare) - set(COMPARED):
        parser.error(f"--compare: unknown {', '.join(sorted(unknown))}; known: {', '.join(COMPARED)}")
    if args.flood_sockets is None:
        args.flood_sockets = args.drivers
    if args.url and args.start_server:
        parser.error("--url and --start-server exclude each other")
    if any("=" not in pair for pair in args.server_env):
        parser.error("--server-env takes KEY=VALUE")
    args.server_env = dict(pair.split("=", 1) for pair in args.server_env)
    args.processes = max(1, min(args.processes, args.drivers))
    return args


def run(args, system: System) -> dict:
    """Every phase asked for; a phase that fails is recorded under ``errors`` and the others still run.

    The figures so far are written to ``--out``/peak.json after each phase.
    """
    figures: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                if k not in ("secret",)},
                     "environment": environment(args, system)}
    kitchens = seed(args, system) if not args.no_peak or args.stress else []
    phases = [("peak", not args.no_peak, lambda: run_peak(args, system, kitchens)),
              ("stress", args.stress, lambda: run_stress(args, system, kitchens)),
              ("comparison", not args.no_compare, lambda: run_comparison(args, system))]
    for name, wanted, phase in phases:
        if not wanted:
            continue
        try:
            figures[name] = phase()
        except Exception:
            figures.setdefault("errors", {})[name] = traceback.format_exc()
            print(f"phase {name} failed:\n{figures['errors'][name]}", file=sys.stderr)
        write_json(figures, args.out / "peak.json")
        wait_until_responsive(system)
    return figures


def write_json(figures: dict, *paths: Path) -> None:
    data = orjson.dumps(strip_private(figures), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def main(argv: list[str]) -> int:
    """Run the phases; print and write the table, the JSON and the plots; 1 if a target is missed."""
    from bench import peak_report

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with system_under_test(args) as system:
        figures = run(args, system)
    figures["targets"] = peak_report.targets(figures, args)
    figures["plots"] = peak_report.plots(figures, args.out)
    report = peak_report.markdown(figures)
    print()
    print(report)
    (args.out / "peak.md").write_text(report)
    write_json(figures, args.out / "peak.json", *([args.json] if args.json else []))
    missed = [t for t in figures["targets"] if t["met"] is False]
    for target in missed:
        print(f"target missed: {target['what']}: {target['figure']} (target {target['target']})", file=sys.stderr)
    return 1 if missed else 0


def strip_private(value):
    """The figures without the plot data (keys starting with ``_``)."""
    if isinstance(value, dict):
        return {k: strip_private(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list):
        return [strip_private(v) for v in value]
    return value
