"""Catalog and order-placement benchmark (issue #2, item 8) over real HTTP on a metro-sized catalog.

Loads a synthetic metro (default 150,000 restaurants x 50 menu items around
Chicago, skewed towards downtown; see ``bench.catalog_metro``) into a fresh
database migrated by the project's own migrations, starts the real server
(uvicorn on ``server.app.create_app``, Ray off; by default two processes, one
per core, each on its own port with an equal share of the connections) and
drives it over loopback from a separate load generator (``bench.catalog_load``:
wrk when installed, else aiohttp processes; closed loop, raw latencies):

* nearby search   ``GET /v1/restaurants/nearby`` (3 km, 20 per page), each restaurant quoted a delivery time
  from a synthetic board of ``--eta-couriers`` couriers per cell (:func:`synthetic_eta_board`)
* menu + status   ``GET /v1/restaurants/{id}/menu``
* order placement ``POST /v1/orders`` with an Idempotency-Key; the committed
  count is checked in the database afterwards

When PostGIS is installed in the same Postgres, the same nearby queries run in
SQL both ways on the same data (the API's H3-range query via
``store.catalog.nearby`` vs ``ST_DWithin``), same points, same concurrency.

Usage: ``python -m bench.catalog [--restaurants N --items N --duration S --concurrency C
--server-workers N --server-mode ports|shared --load-generator auto|wrk|aiohttp
--database-url URL --json FILE --out DIR --keep --reuse-database NAME]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import queue
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import orjson
from tqdm import tqdm

from bench import catalog_metro as metro
from bench.machine import describe, machine_facts
from bench.plots import save
from clients.http import wait_until_healthy
from bench.catalog_load import SQL_VARIANTS, LoadJob, LoadResult, h3_nearby, run_job, run_wrk, wrk_path, wrk_seconds
from server import db
from store.pool import create_pool
from server.auth import Role, mint_token
from server.config import Settings
from store import catalog as store_catalog
from server.cli import parser_for

REPO = Path(__file__).resolve().parents[1]
TARGETS_MS = {"nearby": 20.0, "menu": 20.0, "orders": 50.0}
TARGET_ORDERS_PER_S = 500.0
ORDER_SWEEP = (8, 16, 32, 64)
MENU_CHUNK_RESTAURANTS = 2000
#: Restaurants are offered to a drop-off only within this share of the smallest delivery radius.
DROPOFF_MARGIN = 0.9
#: A drop-off orders from one of its this-many nearest restaurants within reach.
NEIGHBOURS_PER_DROPOFF = 50


# --------------------------------------------------------------------------- server factory


#: Environment variable telling a bench server how many couriers per cell its delivery-time board holds.
ETA_COURIERS_ENV = "HEXDISPATCH_BENCH_ETA_COURIERS"


def create_bench_app():
    """The app uvicorn runs for the bench: settings from the environment, Ray off, no migrations; with
    :data:`ETA_COURIERS_ENV` couriers per cell on its delivery-time board (:func:`synthetic_eta_board`)."""
    from server.app import create_app

    app = create_app(Settings.from_env(use_ray=False, redis_url=None, migrate_on_start=False))
    couriers = int(os.environ.get(ETA_COURIERS_ENV, "0"))
    if couriers:
        app.state.eta_board = synthetic_eta_board(couriers, time.time())
    return app


def synthetic_eta_board(couriers_per_cell: int, now_s: float, seed: int = 7):
    """A delivery-time board (``server.gateway.eta_board``) as live dispatch would fill it, without Ray:
    every cell over the metro (and a ring around it) with ``couriers_per_cell`` couriers spread over the
    cell, free within the next 30 minutes, so that nearby search pays for the quotes as it would live."""
    import h3

    from dispatch.eta_quote import CourierAvailability
    from server.gateway import GatewayParams
    from server.gateway.eta_board import EtaBoard

    params = GatewayParams()
    south, north, west, east = metro.metro_bounds()
    area = h3.LatLngPoly([(south, west), (south, east), (north, east), (north, west)])
    cells = {c for inner in h3.polygon_to_cells(area, params.cell_res) for c in h3.grid_disk(inner, 1)}
    rng = np.random.default_rng(seed)
    board = EtaBoard(params)
    now = now_s / 60.0
    availability = {}
    for cell in sorted(cells):
        lat, lng = h3.cell_to_latlng(cell)
        availability[cell] = CourierAvailability(
            np.sort(now + rng.uniform(0.0, 30.0, couriers_per_cell)),
            lng + rng.uniform(-0.03, 0.03, couriers_per_cell), lat + rng.uniform(-0.02, 0.02, couriers_per_cell),
            float(rng.uniform(0.0, 2.0)), now)
    board.install(availability)
    return board


# --------------------------------------------------------------------------- databases


@contextlib.contextmanager
def admin_dsn(database_url: str | None) -> Iterator[tuple[str, str]]:
    """(DSN of a Postgres we may create databases in, description); embedded when none is given."""
    if database_url:
        yield database_url, f"external Postgres {db.redact(database_url)}"
        return
    with tempfile.TemporaryDirectory(prefix="hexdispatch-bench-pg-") as home:
        embedded = db.EmbeddedPostgres(Path(home) / "pgdata")
        try:
            yield embedded.start(), f"embedded Postgres (pgserver) in {home}"
        finally:
            embedded.stop()


def with_settings(dsn: str, **settings: str) -> str:
    """``dsn`` with Postgres session settings added (asyncpg passes unknown query parameters as settings)."""
    extra = "&".join(f"{k}={v}" for k, v in settings.items())
    return f"{dsn}{'&' if '?' in dsn else '?'}{extra}"


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def fresh_database(admin: str, keep: bool) -> Iterator[str]:
    """A new, empty database for this run (dropped afterwards unless ``keep``)."""
    name = f"hexdispatch_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin_execute(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(admin, name)
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            asyncio.run(_admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def bench_database(admin: str, keep: bool, reuse: str | None) -> Iterator[str]:
    """The database to measure: an existing, already loaded one (``reuse``), else a fresh one."""
    if reuse:
        yield with_database(admin, reuse)
        return
    with fresh_database(admin, keep) as dsn:
        yield dsn


async def _admin_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- bulk load


@dataclass
class Catalog:
    """What the load phases need to know about the loaded restaurants."""

    ids: np.ndarray
    lat: np.ndarray
    lng: np.ndarray
    cuisine: np.ndarray


@dataclass
class LoadTimes:
    """How long each step of the bulk load took, and what it produced."""

    restaurants_s: float = 0.0
    menu_items_s: float = 0.0
    vacuum_analyze_s: float = 0.0
    menu_items: int = 0
    fk_checks_during_copy: bool = True
    database_size_mb: float = 0.0

    @property
    def total_s(self) -> float:
        return self.restaurants_s + self.menu_items_s + self.vacuum_analyze_s


def load_catalog(dsn: str, restaurants: int, items: int, seed: int, processes: int) -> tuple[Catalog, LoadTimes]:
    """Generate and COPY restaurants, then menus (in parallel processes), then VACUUM ANALYZE."""
    times = LoadTimes()
    started = time.perf_counter()
    catalog = asyncio.run(_copy_restaurants(dsn, restaurants, seed))
    times.restaurants_s = time.perf_counter() - started
    started = time.perf_counter()
    times.menu_items, times.fk_checks_during_copy = copy_menus(dsn, catalog, items, seed, processes)
    times.menu_items_s = time.perf_counter() - started
    started = time.perf_counter()
    times.database_size_mb = asyncio.run(_vacuum_analyze(dsn))
    times.vacuum_analyze_s = time.perf_counter() - started
    return catalog, times


def read_catalog(dsn: str) -> Catalog:
    """The restaurants of an already loaded database (for ``--reuse-database``)."""

    async def read() -> Catalog:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT id, latitude, longitude, cuisine_tags[1] AS cuisine FROM restaurants ORDER BY id")
        finally:
            await conn.close()
        names = metro.cuisine_names()
        return Catalog(
            ids=np.array([r["id"] for r in rows], dtype=np.int64),
            lat=np.array([r["latitude"] for r in rows]),
            lng=np.array([r["longitude"] for r in rows]),
            cuisine=np.array([names.index(r["cuisine"]) for r in rows]),
        )

    return asyncio.run(read())


async def _copy_restaurants(dsn: str, n: int, seed: int) -> Catalog:
    """Generate ``n`` restaurants and COPY them in chunks; returns their ids and positions."""
    records, cuisine = metro.restaurant_records(seed, n)
    conn = await asyncpg.connect(dsn)
    try:
        with tqdm(total=n, desc="COPY restaurants", unit="row") as bar:
            step = 20000
            for start in range(0, n, step):
                chunk = records[start:start + step]
                await conn.copy_records_to_table(
                    "restaurants", records=chunk, columns=metro.RESTAURANT_COPY_COLUMNS
                )
                bar.update(len(chunk))
        rows = await conn.fetch("SELECT id, latitude, longitude FROM restaurants ORDER BY id")
    finally:
        await conn.close()
    # Identity values follow COPY order, so row k of ``records`` is the k-th id.
    return Catalog(
        ids=np.array([r["id"] for r in rows], dtype=np.int64),
        lat=np.array([r["latitude"] for r in rows]),
        lng=np.array([r["longitude"] for r in rows]),
        cuisine=np.asarray(cuisine),
    )


def copy_menus(dsn: str, catalog: Catalog, items: int, seed: int, processes: int) -> tuple[int, bool]:
    """COPY ``items`` menu items per restaurant from ``processes`` loader processes; (rows, FK checked)."""
    chunks = [
        (seed * 7919 + start, catalog.ids[start:start + MENU_CHUNK_RESTAURANTS].tolist(),
         catalog.cuisine[start:start + MENU_CHUNK_RESTAURANTS].tolist(), items)
        for start in range(0, len(catalog.ids), MENU_CHUNK_RESTAURANTS)
    ]
    context = multiprocessing.get_context("spawn")
    total, fk_checked = 0, True
    with context.Pool(processes, initializer=_menu_loader_init, initargs=(dsn,)) as pool, \
            tqdm(total=len(catalog.ids) * items, desc="COPY menu_items", unit="row", unit_scale=True) as bar:
        for copied, checked in pool.imap_unordered(_menu_loader_copy, chunks):
            total += copied
            fk_checked = fk_checked and checked
            bar.update(copied)
    return total, fk_checked


_LOADER: dict = {}


def _menu_loader_init(dsn: str) -> None:
    """Loader process: one event loop and one connection for its whole life.

    The rows reference restaurants this run just inserted, so a superuser
    session skips the per-row foreign-key trigger (``session_replication_role``);
    otherwise the checks run as usual.
    """
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(dsn))
    try:
        loop.run_until_complete(conn.execute("SET session_replication_role = replica"))
        fk_checked = False
    except asyncpg.InsufficientPrivilegeError:
        fk_checked = True
    _LOADER.update(loop=loop, conn=conn, fk_checked=fk_checked)


def _menu_loader_copy(chunk: tuple) -> tuple[int, bool]:
    """Loader process: build one chunk's menu rows and COPY them; returns (rows, FK checked)."""
    seed, ids, cuisines, items = chunk
    records = metro.menu_records(seed, ids, cuisines, items)
    _LOADER["loop"].run_until_complete(
        _LOADER["conn"].copy_records_to_table("menu_items", records=records, columns=metro.ITEM_COPY_COLUMNS)
    )
    return len(records), _LOADER["fk_checked"]


async def _vacuum_analyze(dsn: str) -> float:
    """VACUUM ANALYZE the catalog (sets hint bits and the visibility map); returns the database size in MB."""
    conn = await asyncpg.connect(dsn)
    try:
        with tqdm(total=2, desc="VACUUM ANALYZE", unit="table") as bar:
            for table in ("restaurants", "menu_items"):
                await conn.execute(f"VACUUM ANALYZE {table}")
                bar.update(1)
        return await conn.fetchval("SELECT pg_database_size(current_database())") / 2**20
    finally:
        await conn.close()


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(dsn: str, jwt_secret: str, workers: int, mode: str = "ports",
                   eta_couriers: int = 0) -> Iterator[tuple[list[str], list[int]]]:
    """``workers`` uvicorn processes serving :func:`create_bench_app` on loopback; yields (base URLs, pids).

    ``mode="ports"``: one process per port, and the load generators give each
    port an equal share of the connections (what a connection-balancing proxy
    in front of them does). ``mode="shared"``: ``uvicorn --workers`` on one
    socket, where the kernel hands each new connection to whichever worker
    accepts first (with a few long-lived connections, often unevenly).
    """
    env = {**os.environ, "DATABASE_URL": dsn, "HEXDISPATCH_JWT_SECRET": jwt_secret, "PYTHONPATH": str(REPO),
           ETA_COURIERS_ENV: str(eta_couriers)}
    env.pop("REDIS_URL", None)
    ports = [free_port() for _ in range(workers if mode == "ports" else 1)]
    per_port = 1 if mode == "ports" else workers
    processes = []
    try:
        for port in ports:
            command = [
                sys.executable, "-m", "uvicorn", "bench.catalog:create_bench_app", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(per_port),
                "--log-level", "warning", "--no-access-log",
            ]
            processes.append(subprocess.Popen(command, env=env, cwd=REPO))
        base_urls = [f"http://127.0.0.1:{port}" for port in ports]
        for base_url, process in zip(base_urls, processes):
            wait_until_healthy(base_url, process)
        pids = [pid for process in processes for pid in server_pids(process.pid)]
        wait_until_settled(pids)
        yield base_urls, pids
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_settled(pids: list[int], timeout_s: float = 60.0, busy_share: float = 0.1) -> None:
    """Wait until every server process is idle (each worker loads its catalog replica before serving)."""
    import psutil

    processes = [psutil.Process(pid) for pid in pids]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = [p.cpu_times() for p in processes]
        time.sleep(0.5)
        busy = [(a.user + a.system, b.user + b.system) for a, b in zip(before, (p.cpu_times() for p in processes))]
        if all(after - start < busy_share * 0.5 for start, after in busy):
            return


def server_pids(parent: int) -> list[int]:
    """The uvicorn process and its workers, for the report."""
    import psutil

    process = psutil.Process(parent)
    return [parent] + [child.pid for child in process.children(recursive=True)]


# --------------------------------------------------------------------------- workloads


def customer_tokens(secret: str, count: int) -> list[str]:
    """Bearer tokens of ``count`` distinct customers, minted with the server's secret."""
    now = int(time.time())
    return [mint_token(secret, Role.CUSTOMER, f"bench-customer-{i}", now=now, ttl_s=6 * 3600) for i in range(count)]


def nearby_points(seed: int, count: int) -> list[tuple[float, float]]:
    """Search points drawn from the metro's density (people search where restaurants are)."""
    lat, lng = metro.sample_points(np.random.default_rng(seed), count)
    return list(zip(lat.tolist(), lng.tolist()))


def nearby_requests(points: list[tuple[float, float]], radius_m: int, limit: int) -> list[tuple]:
    """``GET /v1/restaurants/nearby`` at each point."""
    return [("GET", f"/v1/restaurants/nearby?lat={lat:.6f}&lng={lng:.6f}&radius_m={radius_m}&limit={limit}", None)
            for lat, lng in points]


def menu_requests(catalog: Catalog, seed: int, count: int) -> list[tuple]:
    """``GET /v1/restaurants/{id}/menu`` for ``count`` restaurants picked uniformly."""
    ids = np.random.default_rng(seed).choice(catalog.ids, size=count)
    return [("GET", f"/v1/restaurants/{int(i)}/menu", None) for i in ids]


def order_requests(dsn: str, catalog: Catalog, seed: int, count: int) -> list[tuple]:
    """``count`` order bodies: a drop-off, a restaurant that delivers there, 1-3 of its available items."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    projection = metro.Projection()
    tree = cKDTree(projection.xy(catalog.lat, catalog.lng))
    reach_m = min(metro.DELIVERY_RADII_M) * DROPOFF_MARGIN
    plans = []
    while len(plans) < count:
        lat, lng = metro.sample_points(rng, count)
        distances, neighbours = tree.query(projection.xy(lat, lng), k=NEIGHBOURS_PER_DROPOFF, distance_upper_bound=reach_m)
        for d_lat, d_lng, dist, near in zip(lat, lng, distances, neighbours):
            near = near[np.isfinite(dist)]
            if len(near):
                plans.append((float(d_lat), float(d_lng), int(catalog.ids[rng.choice(near)])))
    plans = plans[:count]
    menus = asyncio.run(_available_items(dsn, sorted({p[2] for p in plans})))
    bodies = []
    for d_lat, d_lng, restaurant_id in plans:
        menu = menus.get(restaurant_id)
        if not menu:
            continue
        chosen = rng.choice(menu, size=min(len(menu), int(rng.integers(1, 4))), replace=False)
        body = {
            "restaurant_id": restaurant_id,
            "items": [{"item_id": int(i), "quantity": int(rng.integers(1, 3))} for i in chosen],
            "dropoff": {"lat": round(d_lat, 6), "lng": round(d_lng, 6)},
            "dropoff_address": "bench drop-off",
        }
        bodies.append(("POST", "/v1/orders", orjson.dumps(body)))
    return bodies


async def _available_items(dsn: str, restaurant_ids: list[int]) -> dict[int, list[int]]:
    """restaurant id -> ids of its available menu items, read from the database."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT restaurant_id, array_agg(id) AS items FROM menu_items
               WHERE restaurant_id = ANY($1::bigint[]) AND available GROUP BY restaurant_id""",
            restaurant_ids,
        )
    finally:
        await conn.close()
    return {r["restaurant_id"]: list(r["items"]) for r in rows}


# --------------------------------------------------------------------------- running a phase


@dataclass
class PhaseResult:
    """The measured window of one phase, all load processes together."""

    name: str
    concurrency: int
    duration_s: float
    requests: int
    ok: int
    throughput_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict
    error_samples: list[str]
    loadavg_before: tuple
    loadavg_after: tuple
    extra: dict = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("latencies_ms")
        return data


def run_http_phase(args, name: str, template: dict) -> PhaseResult:
    """One HTTP phase on wrk when it is the chosen generator, else on spawned aiohttp processes."""
    if args.load_generator == "wrk":
        job = LoadJob(**{**template, "target": template["target"].split(",")[0], "worker_index": 0})
        loadavg_before = os.getloadavg()
        span = round(wrk_seconds(job.warmup_s) * (job.warmup_s > 0) + wrk_seconds(job.duration_s), 1)
        started = time.monotonic()
        with tqdm(total=span, desc=name, unit="s", bar_format="{l_bar}{bar}| {n:.1f}/{total} s") as bar:
            def tick() -> None:
                bar.n = min(span, round(time.monotonic() - started, 1))
                bar.refresh()

            outcome = run_wrk(job, template["target"].split(","), on_tick=tick)
        return merge_results(name, [job], [outcome], loadavg_before, os.getloadavg())
    return run_phase(name, split_jobs(template, template["concurrency"], args.load_processes))


def run_phase(name: str, jobs: list[LoadJob]) -> PhaseResult:
    """Run the jobs in one spawned process each, with a progress bar; merge their results."""
    context = multiprocessing.get_context("spawn")
    progress = context.Value("q", 0)
    results = context.Queue()
    processes = [context.Process(target=run_job, args=(job, progress, results), daemon=True) for job in jobs]
    loadavg_before = os.getloadavg()
    span = jobs[0].warmup_s + jobs[0].duration_s
    for process in processes:
        process.start()
    outcomes = _collect(name, processes, results, progress, span)
    failures = [o for o in outcomes if isinstance(o, str)]
    if failures:
        raise RuntimeError(f"phase {name}: a load generator failed:\n{failures[0]}")
    return merge_results(name, jobs, outcomes, loadavg_before, os.getloadavg())


def _collect(name, processes, results, progress, span_s: float) -> list:
    """Wait for one outcome per process while showing the phase's progress."""
    outcomes = []
    started = time.monotonic()
    span_s = round(span_s, 1)
    with tqdm(total=span_s, desc=name, unit="s", bar_format="{l_bar}{bar}| {n:.1f}/{total} s {postfix}") as bar:
        while len(outcomes) < len(processes):
            try:
                outcomes.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and results.empty():
                    raise RuntimeError(f"phase {name}: load generators died without a result") from None
            bar.n = min(span_s, round(time.monotonic() - started, 1))
            bar.set_postfix_str(f"{progress.value} requests")
    for process in processes:
        process.join(timeout=30)
    return outcomes


def merge_results(name: str, jobs: list[LoadJob], outcomes: list[LoadResult], before, after) -> PhaseResult:
    """One :class:`PhaseResult` from the load processes' results (percentiles over all latencies)."""
    latencies = np.concatenate([np.asarray(o.latencies_ms, dtype=float) for o in outcomes])
    window = max(o.window_s for o in outcomes)
    statuses: dict = {}
    for o in outcomes:
        for status, n in o.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    ok = sum(o.ok for o in outcomes)
    pct = (lambda q: float(np.percentile(latencies, q))) if len(latencies) else (lambda q: float("nan"))
    return PhaseResult(
        name=name, concurrency=sum(j.concurrency for j in jobs), duration_s=window, requests=len(latencies), ok=ok,
        throughput_per_s=ok / window if window > 0 else 0.0, p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99),
        max_ms=float(latencies.max()) if len(latencies) else float("nan"), statuses=statuses,
        error_samples=[e for o in outcomes for e in o.error_samples][:5], loadavg_before=before, loadavg_after=after,
        extra={"warmup_ok": sum(o.warmup_ok for o in outcomes)}, latencies_ms=latencies.tolist(),
    )


def split_jobs(template: dict, concurrency: int, processes: int) -> list[LoadJob]:
    """``processes`` jobs sharing ``concurrency`` clients (and interleaving the request list)."""
    processes = max(1, min(processes, concurrency))
    jobs = []
    for index in range(processes):
        share = concurrency // processes + (1 if index < concurrency % processes else 0)
        requests = template["requests"][index::processes] or template["requests"]
        jobs.append(LoadJob(**{**template, "requests": requests, "worker_index": index, "concurrency": share}))
    return jobs


# --------------------------------------------------------------------------- order placement


def run_order_phases(args, dsn: str, base_url: str, tokens: list[str], bodies: list[tuple]) -> dict:
    """``base_url``: the server's base URLs, comma-separated."""
    """A short sweep over concurrencies, then a sustained run at the best one; counts checked in the database."""
    tag = secrets.token_hex(3)
    sweep = []
    step_s = max(0.5, args.duration / 4)
    for concurrency in ORDER_SWEEP:
        prefix = f"bench-{tag}-c{concurrency}"
        template = dict(phase=f"orders sweep c={concurrency}", worker_index=0, concurrency=concurrency,
                        warmup_s=min(0.5, args.warmup), duration_s=step_s, requests=bodies, target=base_url, tokens=tokens,
                        key_prefix=prefix, expected_status=201)
        result = run_http_phase(args, template["phase"], template)
        result.extra["committed"] = committed_orders(dsn, prefix)
        sweep.append(result)
    best = best_order_concurrency(sweep)
    prefix = f"bench-{tag}-sustained"
    template = dict(phase=f"orders sustained c={best}", worker_index=0, concurrency=best,
                    warmup_s=args.warmup, duration_s=args.duration, requests=bodies, target=base_url,
                    tokens=tokens, key_prefix=prefix, expected_status=201)
    sustained = run_http_phase(args, "orders", template)
    sustained.extra["committed"] = committed_orders(dsn, prefix)
    measured = sustained.extra["committed"]["measured"]
    sustained.extra["committed_per_s"] = measured / sustained.duration_s if sustained.duration_s else 0.0
    # wrk stops without reading the responses still in flight: up to ``best`` orders commit unacknowledged.
    in_flight = best if args.load_generator == "wrk" else 0
    sustained.extra["unacknowledged"] = measured - sustained.ok
    sustained.extra["count_matches"] = 0 <= measured - sustained.ok <= in_flight
    return {"sweep": sweep, "sustained": sustained, "chosen_concurrency": best}


def best_order_concurrency(sweep: list[PhaseResult]) -> int:
    """The sweep's highest-throughput concurrency whose p99 meets the target (else the highest throughput)."""
    within = [r for r in sweep if r.p99_ms < TARGETS_MS["orders"]] or sweep
    return max(within, key=lambda r: r.throughput_per_s).concurrency


def committed_orders(dsn: str, prefix: str) -> dict:
    """Orders (and their 'placed' audit events) the database holds for one run's keys."""

    async def count() -> dict:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                """SELECT count(*) FILTER (WHERE o.idempotency_key LIKE $1 || '-m-%') AS measured,
                          count(*) AS total,
                          count(e.id) AS with_event
                   FROM orders o LEFT JOIN order_events e ON e.order_id = o.id AND e.seq = 1
                   WHERE o.idempotency_key LIKE $1 || '-%'""",
                prefix,
            )
            return dict(row)
        finally:
            await conn.close()

    return asyncio.run(count())


# --------------------------------------------------------------------------- PostGIS comparison


def prepare_postgis(dsn: str) -> str | None:
    """Add a geography column and GiST index in the bench database; ``None`` if ready, else why not."""

    async def prepare() -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            except asyncpg.PostgresError as exc:
                return f"PostGIS is not available in this Postgres ({exc.__class__.__name__}: {exc})"
            with tqdm(total=4, desc="PostGIS column + GiST", unit="step") as bar:
                await conn.execute("ALTER TABLE restaurants ADD COLUMN IF NOT EXISTS bench_geog geography(Point, 4326)")
                bar.update(1)
                await conn.execute(
                    "UPDATE restaurants SET bench_geog = ST_SetSRID(ST_MakePoint(longitude, latitude), 4326)::geography"
                    " WHERE bench_geog IS NULL"
                )
                bar.update(1)
                await conn.execute("CREATE INDEX IF NOT EXISTS restaurants_bench_geog ON restaurants USING gist (bench_geog)")
                bar.update(1)
                await conn.execute("VACUUM ANALYZE restaurants")
                bar.update(1)
            return None
        finally:
            await conn.close()

    return asyncio.run(prepare())


def run_sql_comparison(args, dsn: str, points: list[tuple[float, float]]) -> dict:
    """The same nearby searches in SQL: H3 ranges (the API's query) vs PostGIS, same points and concurrency."""
    phases = {}
    for variant in SQL_VARIANTS:
        template = dict(phase=f"sql {variant}", worker_index=0, concurrency=args.concurrency, warmup_s=args.warmup,
                        duration_s=args.duration, requests=points, target=with_settings(dsn, jit="off"), kind=variant,
                        radius_m=float(args.radius), limit=args.limit)
        phases[variant] = run_phase(template["phase"], split_jobs(template, args.concurrency, args.load_processes))
    phases["agreement"] = result_agreement(dsn, points[: args.agreement_points], args.radius, args.limit)
    return phases


def result_agreement(dsn: str, points, radius_m: float, limit: int) -> dict:
    """How often the H3 and ST_DWithin queries return the same restaurants, in the same order."""
    from bench.catalog_load import POSTGIS_DWITHIN_SQL

    async def compare() -> dict:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        same_set = same_order = 0
        try:
            async with pool.acquire() as c:
                for lat, lng in points:
                    ours = [r["id"] for r in await h3_nearby(c, lat, lng, radius_m, limit)]
                    theirs = [r["id"] for r in await c.fetch(POSTGIS_DWITHIN_SQL, lat, lng, float(radius_m), limit)]
                    same_set += set(ours) == set(theirs)
                    same_order += ours == theirs
        finally:
            await pool.close()
        return {"points": len(points), "same_set": same_set, "same_order": same_order}

    return asyncio.run(compare())


# --------------------------------------------------------------------------- diagnostics


class ExplainingConnection:
    """Wraps a connection so a store function's ``fetch`` returns its EXPLAIN ANALYZE plan instead."""

    def __init__(self, conn):
        self._conn = conn

    async def fetch(self, sql: str, *params):
        return await self._conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)


def explain_nearby(dsn: str, lat: float, lng: float, radius_m: float, limit: int) -> dict:
    """EXPLAIN ANALYZE of the API's nearby query at one point, and how many rows its H3 ranges hold."""

    async def explain() -> dict:
        pool = await create_pool(dsn, min_size=1, max_size=1)
        try:
            async with pool.acquire() as c:
                plan = await h3_nearby(ExplainingConnection(c), lat, lng, radius_m, limit + 1)
                in_radius = await c.fetchval(
                    f"SELECT count(*) FROM restaurants r WHERE {store_catalog.DISTANCE_SQL} <= $3",
                    lat, lng, float(radius_m),
                )
        finally:
            await pool.close()
        return {"lat": lat, "lng": lng, "restaurants_within_radius": in_radius,
                "plan": "\n".join(r[0] for r in plan)}

    return asyncio.run(explain())


# --------------------------------------------------------------------------- reporting


def environment(args, where: str, server_workers: int) -> dict:
    """What ran where: CPUs, memory, Postgres, server and load-generator processes, load average."""
    return {
        **machine_facts(),
        "postgres": where,
        "server": f"uvicorn (uvloop/httptools), {server_workers} worker process(es) "
                  + ("on their own ports, connections spread evenly" if args.server_mode == "ports"
                     else "sharing one socket (uvicorn --workers)")
                  + f", Ray off, asyncpg pool max {Settings().db_pool_max} per process, loopback"
                  + f", delivery-time board of {args.eta_couriers} couriers per cell",
        "load_generators": ("wrk (one thread per server port), closed loop" if args.load_generator == "wrk"
                            else f"{args.load_processes} spawned process(es) (aiohttp)")
                           + f"; SQL comparison: {args.load_processes} spawned asyncpg process(es), closed loop",
    }


def markdown_report(figures: dict) -> str:
    """The figures as a markdown table with targets, plus the PostGIS comparison and the environment."""
    load = figures["load"]
    env = figures["environment"]
    lines = [
        f"## Catalog benchmark: {figures['restaurants']:,} restaurants x {figures['items']} items",
        "",
        f"Machine: {describe(env)}; {env['postgres']}; server: {env['server']}; "
        f"load: {env['load_generators']}. Load average at start: "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}.",
        "",
        load_line(load),
        "",
        "| phase | concurrency | requests | ok | throughput /s | p50 ms | p90 ms | p99 ms | max ms | target | met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for key, label in (("nearby", "nearby search (HTTP)"), ("menu", "menu + status (HTTP)")):
        lines.append(_row(label, figures["phases"][key], f"p99 < {TARGETS_MS[key]:.0f} ms",
                          figures["phases"][key]["p99_ms"] < TARGETS_MS[key]))
    orders = figures["phases"]["orders"]
    met = orders["extra"]["committed_per_s"] >= TARGET_ORDERS_PER_S and orders["p99_ms"] < TARGETS_MS["orders"]
    lines.append(_row("order placement (HTTP, sustained)", orders,
                      f">= {TARGET_ORDERS_PER_S:.0f}/s, p99 < {TARGETS_MS['orders']:.0f} ms", met))
    committed = orders["extra"]["committed"]
    lines += [
        "",
        f"Orders committed in the measured window (counted in the database): {committed['measured']:,} "
        f"= {orders['extra']['committed_per_s']:.0f}/s; the client saw {orders['ok']:,} acknowledged "
        f"({orders['extra']['unacknowledged']} still in flight when the load stopped); consistent: "
        f"{orders['extra']['count_matches']}; every order has its 'placed' event: "
        f"{committed['with_event'] == committed['total']}.",
        "",
        "Order placement sweep (short runs; the sustained run uses the best concurrency meeting p99):",
        "",
        "| concurrency | orders/s | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['concurrency']} | {r['throughput_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
              for r in figures["order_sweep"]]
    explain = figures["explain_downtown"]
    elapsed = [line.strip() for line in explain["plan"].splitlines() if line.startswith("Execution Time")]
    lines += ["", f"EXPLAIN ANALYZE of the API's nearby query downtown ({explain['lat']}, {explain['lng']}): "
                  f"{explain['restaurants_within_radius']:,} restaurants within {figures['radius_m']} m; "
                  f"{elapsed[0] if elapsed else 'no timing'} (full plan in the JSON).",
              "", *postgis_lines(figures.get("postgis"))]
    return "\n".join(lines) + "\n"


def load_line(load: dict) -> str:
    """The bulk-load sentence of the report."""
    if "reused_database" in load:
        return f"Load: none (reused the already loaded database {load['reused_database']})."
    return (f"Load: restaurants {load['restaurants_s']:.1f} s, {load['menu_items']:,} menu items "
            f"{load['menu_items_s']:.1f} s ({load['menu_items'] / max(load['menu_items_s'], 1e-9):,.0f} rows/s, "
            f"foreign-key trigger {'on' if load['fk_checks_during_copy'] else 'skipped'}), VACUUM ANALYZE "
            f"{load['vacuum_analyze_s']:.1f} s, total {load['total_s']:.1f} s; database {load['database_size_mb']:,.0f} MB.")


def _row(label: str, r: dict, target: str, met: bool) -> str:
    """One row of the main table."""
    return (f"| {label} | {r['concurrency']} | {r['requests']:,} | {r['ok']:,} | {r['throughput_per_s']:,.0f} | "
            f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {target} | "
            f"{'yes' if met else '**no**'} |")


def postgis_lines(postgis: dict | None) -> list[str]:
    """The PostGIS comparison table (or why it did not run)."""
    if postgis is None:
        return ["PostGIS comparison: skipped (--no-postgis)."]
    if "unavailable" in postgis:
        return [f"PostGIS comparison: not run. {postgis['unavailable']}"]
    h3 = postgis["h3"]
    lines = [
        "Nearby search in SQL, same points and concurrency (H3 ranges = the API's query, "
        "`store.catalog.nearby`); JIT off in these sessions for both, since JIT compilation alone "
        "costs 10-190 ms per query on these plans:",
        "",
        "| query | queries/s | p50 ms | p99 ms | p50 ratio vs H3 | p99 ratio vs H3 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {"h3": "H3 ranges (btree)", "postgis_dwithin": "PostGIS ST_DWithin + ORDER BY ST_Distance",
              "postgis_knn": "PostGIS ST_DWithin + ORDER BY <-> (KNN)"}
    for variant in SQL_VARIANTS:
        r = postgis[variant]
        lines.append(f"| {labels[variant]} | {r['throughput_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['p50_ms'] / h3['p50_ms']:.2f} | {r['p99_ms'] / h3['p99_ms']:.2f} |")
    agreement = postgis["agreement"]
    lines += ["", f"Same restaurants from H3 and ST_DWithin at {agreement['same_set']}/{agreement['points']} points "
                  f"(same order at {agreement['same_order']})."]
    return lines


def plot_latencies(phases: dict[str, PhaseResult], out: Path) -> list[str]:
    """One PNG per phase: latency histogram (log scale) with p50/p99 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, result in phases.items():
        if not result.latencies_ms:
            continue
        latencies = np.asarray(result.latencies_ms)
        fig, ax = plt.subplots(figsize=(7, 4))
        bins = np.logspace(np.log10(max(latencies.min(), 0.05)), np.log10(latencies.max() + 1e-9), 60)
        ax.hist(latencies, bins=bins, color="#4878a8")
        ax.set_xscale("log")
        for label, q, style in (("p50", result.p50_ms, "--"), ("p99", result.p99_ms, ":")):
            ax.axvline(q, color="black", linestyle=style, label=f"{label} {q:.1f} ms")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{result.name}: p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
                     f"{result.throughput_per_s:,.0f}/s at concurrency {result.concurrency}", fontsize=9)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("requests")
        written.append(save(fig, out / f"catalog_{key}.png"))
    return written


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options; defaults are the issue's figures."""
    parser = parser_for("python -m bench.catalog", __doc__)
    parser.add_argument("--restaurants", type=int, default=150_000)
    parser.add_argument("--items", type=int, default=50, help="menu items per restaurant")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds before each phase")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight for search and menu")
    parser.add_argument("--radius", type=int, default=3000, help="nearby search radius, metres")
    parser.add_argument("--limit", type=int, default=20, help="nearby search page size")
    parser.add_argument("--eta-couriers", type=int, default=128,
                        help="couriers per H3 cell on each server's delivery-time board, which nearby quotes "
                             "every restaurant from (0: none, every delivery_eta null)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="a Postgres where the bench may create a database (default $DATABASE_URL, "
                             "else an embedded Postgres in a temporary directory)")
    parser.add_argument("--server-workers", type=int, default=2, help="server processes")
    parser.add_argument("--server-mode", choices=("ports", "shared"), default="ports",
                        help="ports: one process per port, connections spread evenly by the load generator; "
                             "shared: uvicorn --workers on one socket")
    parser.add_argument("--load-generator", choices=("auto", "wrk", "aiohttp"), default="auto",
                        help="HTTP load generator (auto: wrk when installed, else aiohttp)")
    parser.add_argument("--load-processes", type=int, default=1, help="aiohttp / asyncpg load-generator processes")
    parser.add_argument("--loader-processes", type=int, default=os.cpu_count() or 2, help="bulk-load processes")
    parser.add_argument("--agreement-points", type=int, default=100,
                        help="points where H3 and PostGIS results are compared row by row")
    parser.add_argument("--no-postgis", action="store_true", help="skip the PostGIS comparison")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="markdown and plots go here")
    parser.add_argument("--keep", action="store_true", help="keep the bench database afterwards")
    parser.add_argument("--reuse-database", metavar="NAME", default=None,
                        help="measure an already loaded database kept by --keep (no load, not dropped)")
    args = parser.parse_args(argv)
    if args.load_generator == "auto":
        args.load_generator = "wrk" if wrk_path() else "aiohttp"
    elif args.load_generator == "wrk" and not wrk_path():
        parser.error("wrk is not installed (apt-get install wrk)")
    if args.warmup is None:
        args.warmup = min(2.0, max(0.5, args.duration / 10))
    return args


def run(args: argparse.Namespace, admin: str, where: str) -> dict:
    """Everything after we have a Postgres: load, HTTP phases, PostGIS comparison; returns the figures.

    The latencies of every phase are returned under ``"_plots"`` (for the plots, not the JSON).
    """
    figures: dict = {"restaurants": args.restaurants, "items": args.items, "radius_m": args.radius,
                     "limit": args.limit, "environment": environment(args, where, args.server_workers)}
    with bench_database(admin, args.keep, args.reuse_database) as dsn:
        if args.reuse_database:
            catalog = read_catalog(dsn)
            figures["load"] = {"reused_database": args.reuse_database}
        else:
            db.migrate_sync(dsn)
            catalog, load = load_catalog(dsn, args.restaurants, args.items, args.seed, args.loader_processes)
            figures["load"] = {**asdict(load), "total_s": load.total_s}
        points = nearby_points(args.seed + 1, 20_000)
        phases = run_http_phases(args, dsn, catalog, points, figures)
        figures["explain_downtown"] = explain_nearby(dsn, *metro.HOTSPOTS[0][1:3], args.radius, args.limit)
        figures["phases"] = {k: v.summary() for k, v in phases.items()}
        figures["postgis"], sql_phases = run_postgis_comparison(args, dsn, points)
        figures["_plots"] = {**phases, **{f"sql_{k}": v for k, v in sql_phases.items()}}
    return figures


def run_http_phases(args, dsn: str, catalog: Catalog, points, figures: dict) -> dict[str, PhaseResult]:
    """Nearby search, menu fetch and order placement against a freshly started server."""
    secret = secrets.token_urlsafe(32)
    tokens = customer_tokens(secret, 1000)
    bodies = order_requests(dsn, catalog, args.seed + 2, 20_000)
    phases: dict[str, PhaseResult] = {}
    with running_server(dsn, secret, args.server_workers, args.server_mode,
                        args.eta_couriers) as (base_urls, pids):
        figures["environment"]["server_pids"] = pids
        base_url = ",".join(base_urls)
        common = dict(worker_index=0, warmup_s=args.warmup, duration_s=args.duration, target=base_url,
                      tokens=tokens, concurrency=args.concurrency)
        workloads = {"nearby": nearby_requests(points, args.radius, args.limit),
                     "menu": menu_requests(catalog, args.seed + 3, 20_000)}
        for name, requests in workloads.items():
            template = dict(common, phase=name, requests=requests)
            phases[name] = run_http_phase(args, name, template)
        orders = run_order_phases(args, dsn, base_url, tokens, bodies)
    phases["orders"] = orders["sustained"]
    figures["order_sweep"] = [r.summary() for r in orders["sweep"]]
    figures["order_concurrency"] = orders["chosen_concurrency"]
    return phases


def run_postgis_comparison(args, dsn: str, points) -> tuple[dict | None, dict[str, PhaseResult]]:
    """(figures, phases) of the SQL comparison; figures say why when it could not run."""
    if args.no_postgis:
        return None, {}
    why_not = prepare_postgis(dsn)
    if why_not:
        return {"unavailable": why_not}, {}
    sql = run_sql_comparison(args, dsn, points)
    phases = {k: v for k, v in sql.items() if isinstance(v, PhaseResult)}
    return {k: (v.summary() if isinstance(v, PhaseResult) else v) for k, v in sql.items()}, phases


def main(argv: list[str]) -> int:
    """Run the benchmark; print the table and write markdown, JSON and plots."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with admin_dsn(args.database_url) as (admin, where):
        figures = run(args, admin, where)
    phases = figures.pop("_plots")
    figures["plots"] = plot_latencies(phases, args.out)
    report = markdown_report(figures)
    print()
    print(report)
    (args.out / "catalog.md").write_text(report)
    (args.out / "catalog.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
