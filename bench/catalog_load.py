"""Load generators for ``bench.catalog``: closed-loop clients in their own processes.

Each :class:`LoadJob` runs in a separate (spawned) process, so the clients
never share a CPU-bound event loop with the server they measure. A job keeps
``concurrency`` requests in flight for ``warmup_s + duration_s`` seconds, over
HTTP (aiohttp, keep-alive, loopback) or straight SQL (asyncpg), and returns
the latencies of the requests started after the warm-up.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from server.store import catalog

#: Nearby search with PostGIS: the same columns, filter and order as ``catalog.nearby``,
#: candidates found by ``ST_DWithin`` on a GiST index instead of H3 ranges.
#: Distances on the sphere (``use_spheroid = false``) to match the haversine of the H3 query.
POSTGIS_DWITHIN_SQL = f"""
    SELECT {catalog.RESTAURANT_COLUMNS}, ST_Distance(r.bench_geog, q.pt, false) AS distance_m
    FROM (SELECT ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography AS pt) AS q
    JOIN restaurants r ON ST_DWithin(r.bench_geog, q.pt, $3, false)
    WHERE ST_Distance(r.bench_geog, q.pt, false) <= least($3, r.delivery_radius_m)
    ORDER BY distance_m, r.id
    LIMIT $4
"""
#: The same with the GiST index walked in distance order (KNN ``<->``), stopping at the limit.
POSTGIS_KNN_SQL = f"""
    SELECT {catalog.RESTAURANT_COLUMNS}, ST_Distance(r.bench_geog, q.pt, false) AS distance_m
    FROM (SELECT ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography AS pt) AS q
    JOIN restaurants r ON ST_DWithin(r.bench_geog, q.pt, $3, false)
    WHERE ST_Distance(r.bench_geog, q.pt, false) <= least($3, r.delivery_radius_m)
    ORDER BY r.bench_geog <-> q.pt, r.id
    LIMIT $4
"""
SQL_VARIANTS = ("h3", "postgis_dwithin", "postgis_knn")


@dataclass
class LoadJob:
    """What one load-generator process does."""

    phase: str
    worker_index: int
    concurrency: int
    warmup_s: float
    duration_s: float
    #: HTTP: (method, path, JSON body bytes or None); SQL: (lat, lng).
    requests: list
    #: HTTP target ("http://127.0.0.1:port") or, for SQL jobs, a Postgres DSN.
    target: str
    #: ``"http"`` or one of :data:`SQL_VARIANTS`.
    kind: str = "http"
    #: Bearer tokens, used round-robin (HTTP only).
    tokens: list[str] = field(default_factory=list)
    #: Idempotency-Key prefix for POSTs; keys are ``{prefix}-{m|w}-{worker}-{n}`` (m = measured).
    key_prefix: str = ""
    expected_status: int = 200
    radius_m: float = 3000.0
    limit: int = 20


@dataclass
class LoadResult:
    """Latencies (ms) of measured requests, and what came back."""

    phase: str
    worker_index: int
    latencies_ms: list[float]
    window_s: float
    ok: int
    statuses: dict
    error_samples: list[str]
    warmup_ok: int


def run_job(job: LoadJob, progress, results) -> None:
    """Process entry point: run ``job`` and put its :class:`LoadResult` (or a traceback) on ``results``."""
    try:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        results.put(asyncio.run(_run(job, progress)))
    except BaseException:  # report, do not hang the parent waiting for a result
        results.put(traceback.format_exc())


async def _run(job: LoadJob, progress) -> LoadResult:
    if job.kind == "http":
        return await _run_http(job, progress)
    return await _run_sql(job, progress)


class _Clock:
    """The shared schedule of one job: warm-up, measured window, and the request sequence."""

    def __init__(self, job: LoadJob):
        self.job = job
        self.start = time.perf_counter()
        self.measure_from = self.start + job.warmup_s
        self.stop_at = self.measure_from + job.duration_s
        self.sequence = itertools.count()
        self.last_done = self.measure_from
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.errors: list[str] = []
        self.ok = 0
        self.warmup_ok = 0

    def record(self, started: float, ok: bool, status: object, progress) -> None:
        done = time.perf_counter()
        if started >= self.measure_from:
            self.latencies.append((done - started) * 1000.0)
            self.statuses[str(status)] += 1
            self.ok += ok
            self.last_done = max(self.last_done, done)
        else:
            self.warmup_ok += ok
        with progress.get_lock():
            progress.value += 1

    def result(self) -> LoadResult:
        return LoadResult(
            phase=self.job.phase, worker_index=self.job.worker_index, latencies_ms=self.latencies,
            window_s=self.last_done - self.measure_from, ok=self.ok, statuses=dict(self.statuses),
            error_samples=self.errors[:5], warmup_ok=self.warmup_ok,
        )


async def _run_http(job: LoadJob, progress) -> LoadResult:
    import aiohttp

    clock = _Clock(job)
    connector = aiohttp.TCPConnector(limit=job.concurrency, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(job.target, connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while (started := time.perf_counter()) < clock.stop_at:
                n = next(clock.sequence)
                method, path, body = job.requests[n % len(job.requests)]
                headers = {"Authorization": f"Bearer {job.tokens[n % len(job.tokens)]}"}
                if method == "POST":
                    measured = "m" if started >= clock.measure_from else "w"
                    headers["Idempotency-Key"] = f"{job.key_prefix}-{measured}-{job.worker_index}-{n}"
                    headers["Content-Type"] = "application/json"
                try:
                    async with session.request(method, path, data=body, headers=headers) as response:
                        payload = await response.read()
                        status = response.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    payload, status = repr(exc).encode(), type(exc).__name__
                ok = status == job.expected_status
                if not ok and len(clock.errors) < 5:
                    clock.errors.append(f"{method} {path} -> {status}: {payload[:300].decode(errors='replace')}")
                clock.record(started, ok, status, progress)

        await asyncio.gather(*(client() for _ in range(job.concurrency)))
    return clock.result()


async def _run_sql(job: LoadJob, progress) -> LoadResult:
    from server import db

    clock = _Clock(job)
    query = _sql_variant(job.kind)
    pool = await db.create_pool(job.target, min_size=job.concurrency, max_size=job.concurrency)
    try:

        async def client() -> None:
            while (started := time.perf_counter()) < clock.stop_at:
                lat, lng = job.requests[next(clock.sequence) % len(job.requests)]
                async with pool.acquire() as conn:
                    await query(conn, lat, lng, job.radius_m, job.limit + 1)
                clock.record(started, True, "rows", progress)

        await asyncio.gather(*(client() for _ in range(job.concurrency)))
    finally:
        await pool.close()
    return clock.result()


def _sql_variant(kind: str):
    """``async (conn, lat, lng, radius_m, limit) -> rows`` for one of :data:`SQL_VARIANTS`."""
    if kind == "h3":
        return h3_nearby
    sql = {"postgis_dwithin": POSTGIS_DWITHIN_SQL, "postgis_knn": POSTGIS_KNN_SQL}[kind]

    async def postgis_nearby(conn, lat, lng, radius_m, limit):
        return await conn.fetch(sql, lat, lng, float(radius_m), limit)

    return postgis_nearby


async def h3_nearby(conn, lat: float, lng: float, radius_m: float, limit: int):
    """The API's own nearby search (``server.store.catalog.nearby``) with the API's defaults."""
    return await catalog.nearby(
        conn, lat=lat, lng=lng, radius_m=radius_m, cuisine=None, name_contains=None, open_now=False,
        after=None, limit=limit,
    )
