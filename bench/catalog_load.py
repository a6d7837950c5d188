"""Load generators for ``bench.catalog``: closed-loop clients outside the server's processes.

HTTP phases run on ``wrk`` (C, epoll; :func:`run_wrk`) when it is installed:
the load generator shares the machine's CPUs with the server and Postgres, and
wrk spends a small fraction of what a Python client does per request. Without
wrk, and for the SQL comparison, each :class:`LoadJob` runs in a separate
(spawned) Python process (aiohttp or asyncpg). Either way a job keeps
``concurrency`` requests in flight (keep-alive, loopback) for ``warmup_s +
duration_s`` seconds and returns the latencies of the measured requests.
Several server processes each get an equal share of the connections (wrk: one
thread per server port; aiohttp: clients take the targets in turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import subprocess
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

from store import catalog

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
    #: HTTP targets ("http://127.0.0.1:port", comma-separated when several server processes
    #: listen on their own ports: clients take them in turn) or, for SQL jobs, a Postgres DSN.
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
    timeout = aiohttp.ClientTimeout(total=30)
    targets = job.target.split(",")
    async with contextlib.AsyncExitStack() as stack:
        sessions = [
            await stack.enter_async_context(aiohttp.ClientSession(
                target, connector=aiohttp.TCPConnector(limit=job.concurrency, ttl_dns_cache=None), timeout=timeout))
            for target in targets
        ]

        async def client(session) -> None:
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

        await asyncio.gather(*(client(sessions[i % len(sessions)]) for i in range(job.concurrency)))
    return clock.result()


async def _run_sql(job: LoadJob, progress) -> LoadResult:
    from store.pool import create_pool

    clock = _Clock(job)
    query = _sql_variant(job.kind)
    pool = await create_pool(job.target, min_size=job.concurrency, max_size=job.concurrency)
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
    """The API's own nearby search (``store.catalog.nearby``) with the API's defaults."""
    return await catalog.nearby(
        conn, lat=lat, lng=lng, radius_m=radius_m, cuisine=None, name_contains=None, open_now=False,
        after=None, limit=limit,
    )


# --------------------------------------------------------------------------- wrk

#: The Lua script driving wrk (varied requests and tokens, one server port per thread, histogram out).
WRK_SCRIPT = Path(__file__).with_name("catalog_wrk.lua")


def wrk_path() -> str | None:
    """The ``wrk`` executable, when installed (``apt-get install wrk``)."""
    return shutil.which("wrk")


def wrk_seconds(seconds: float) -> int:
    """wrk takes whole seconds only."""
    return max(1, math.ceil(seconds - 1e-9))


def run_wrk(job: LoadJob, targets: list[str], on_tick=None) -> LoadResult:
    """Run ``job`` with wrk (C, epoll): one thread per target, ``job.concurrency`` connections in all.

    A warm-up run (its own Idempotency-Keys, ``-w-``) precedes the measured
    run (``-m-``). Responses with a status below 400 count as ok (wrk does not
    tell 200 from 201; order placements are counted in the database instead).
    """
    ports = [urlsplit(t).port for t in targets]
    threads = max(1, min(len(ports), job.concurrency))
    with tempfile.TemporaryDirectory(prefix="hexdispatch-wrk-") as tmp:
        tmp_dir = Path(tmp)
        requests_file, tokens_file = tmp_dir / "requests.tsv", tmp_dir / "tokens.txt"
        with requests_file.open("w") as fh:
            for method, path, body in job.requests:
                fh.write(f"{method}\t{path}\t{body.decode() if body else ''}\n")
        tokens_file.write_text("\n".join(job.tokens or ["none"]) + "\n")
        runs = {}
        for stage, seconds in (("w", job.warmup_s), ("m", job.duration_s)):
            if stage == "w" and seconds <= 0:
                continue
            out = tmp_dir / f"{stage}.json"
            env = {**os.environ, "HEXDISPATCH_WRK_REQUESTS": str(requests_file), "HEXDISPATCH_WRK_TOKENS": str(tokens_file),
                   "HEXDISPATCH_WRK_PORTS": ",".join(str(p) for p in ports), "HEXDISPATCH_WRK_OUT": str(out),
                   "HEXDISPATCH_WRK_KEY": f"{job.key_prefix}-{stage}", "HEXDISPATCH_WRK_THREADS": str(threads)}
            command = [wrk_path(), f"-t{threads}", f"-c{job.concurrency}", f"-d{wrk_seconds(seconds)}s",
                       "--timeout", "30s", "-s", str(WRK_SCRIPT), targets[0]]
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            while process.poll() is None:
                time.sleep(0.25)
                if on_tick is not None:
                    on_tick()
            output = process.stdout.read()
            if process.returncode != 0 or not out.exists():
                raise RuntimeError(f"wrk failed ({process.returncode}):\n{output[-2000:]}")
            runs[stage] = orjson.loads(out.read_bytes())
    measured = runs["m"]
    values, counts = uncorrected_latencies(measured, job.concurrency)
    values = values / 1000.0
    errors = measured["errors"]
    failed = errors["status"]
    statuses = {"<400": measured["requests"] - failed}
    statuses.update({f"error_{k}": v for k, v in errors.items() if v and k != "status"})
    if failed:
        statuses[">=400"] = failed
    warm = runs.get("w")
    return LoadResult(
        phase=job.phase, worker_index=0, latencies_ms=np.repeat(values, counts).tolist(),
        window_s=measured["duration_us"] / 1e6, ok=measured["requests"] - failed, statuses=statuses,
        error_samples=[f"{k}: {v}" for k, v in errors.items() if v][:5],
        warmup_ok=(warm["requests"] - warm["errors"]["status"]) if warm else 0,
    )


def uncorrected_latencies(run: dict, connections: int) -> tuple[np.ndarray, np.ndarray]:
    """(latency µs, count) of the responses wrk measured, without its coordinated-omission correction.

    Before ``done()``, wrk adds to its histogram, for every sample ``n >= 2I``,
    synthetic samples at ``n - I, n - 2I, ...`` (while above ``I``), where
    ``I = duration_us // (requests // connections)``, as if the load were an
    open loop at the measured rate. This bench is a closed loop (like its
    aiohttp generator), so the raw histogram is recovered: for ``n > I``,
    ``raw[n] = corrected[n] - corrected[n + I]``.
    """
    pairs = np.array(run["latency_us"], dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    per_connection = run["requests"] // max(1, connections)
    corrected = np.zeros(int(pairs[:, 0].max()) + 1, dtype=np.int64)
    corrected[pairs[:, 0]] = pairs[:, 1]
    if per_connection > 0:
        interval = run["duration_us"] // per_connection
        raw = corrected.copy()
        if 0 < interval < len(corrected):
            raw[interval + 1:len(corrected) - interval] -= corrected[2 * interval + 1:]
    else:
        raw = corrected
    values = np.flatnonzero(raw > 0)
    return values.astype(float), raw[values]
