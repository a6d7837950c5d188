"""The application factory: routes, error handlers, and resources opened by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from typing import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

from server import db
from server import local_ray
from server import ws
from server.api import admin, docs, drivers, ops, orders, restaurants
from server.config import Settings
from server.auth import TokenVerifier
from server.broker import create_broker
from server.errors import EXCEPTION_HANDLERS
from runtime.gc_watch import GcWatch, freeze_survivors
from store.pool import create_pool
from server.log_redaction import install_log_redaction
from server.loop_guard import LoopGuard
from server.metrics import FrontDoorMetrics, RequestMetrics, metrics_endpoint
from server.ratelimit import create_rate_limiter
from server.responses import JSONResponse
from server.stats_file import StatsFile

log = logging.getLogger("hexdispatch.app")


async def health(request: Request) -> JSONResponse:
    """Liveness and readiness: answers 200 only when Postgres answers."""
    async with request.app.state.pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
    return JSONResponse({"status": "ok"})


def routes() -> list:
    return [
        Route("/v1/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *restaurants.ROUTES, *orders.ROUTES, *drivers.ROUTES, *admin.ROUTES, *ws.ROUTES, *ops.ROUTES, *docs.ROUTES,
    ]


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with contextlib.AsyncExitStack() as stack:
        dsn = settings.database_url
        if dsn is None:
            embedded = db.EmbeddedPostgres(settings.home / "pgdata")
            dsn = embedded.start()
            stack.callback(embedded.stop)
        if settings.migrate_on_start:
            await db.migrate(dsn)
        app.state.pool = await create_pool(dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
        stack.push_async_callback(app.state.pool.close)
        from server.catalog_cache import CatalogCache  # menu cache + nearby replica, fresh by NOTIFY

        app.state.catalog = await stack.enter_async_context(CatalogCache(dsn, app.state.pool))
        app.state.tokens = TokenVerifier(settings.resolved_jwt_secret())
        if settings.redis_url:
            app.state.redis = open_redis(settings.redis_url, settings.redis_pool_max, settings.redis_pool_wait_s)
            await app.state.redis.ping()
            stack.push_async_callback(app.state.redis.aclose)
        else:
            app.state.redis = None
        # Several deployments may share one Redis: namespace our keys and channels by our database.
        redis_prefix = f"hexdispatch:{await db.database_identity(app.state.pool)}:"
        app.state.rate_limiter = create_rate_limiter(app.state.redis, redis_prefix)
        app.state.gc_watch = stack.enter_context(GcWatch(on_pause=app.state.metrics.gc_pause))
        freezer = asyncio.get_running_loop().create_task(freeze_survivors())
        stack.callback(freezer.cancel)
        app.state.loop_guard = guard = LoopGuard()
        heartbeat = asyncio.get_running_loop().create_task(guard.run())
        stack.callback(heartbeat.cancel)
        gc_watch = app.state.gc_watch
        # This process's own health, beside the gateway's counters (admin stats and the stats file).
        app.state.process_counters = lambda: {"loop_guard_waits": guard.waits, **gc_watch.stats()}
        app.state.gateway = None
        if settings.use_ray:
            from server.gateway import Gateway

            stack.callback(_connect_ray(settings))
            app.state.gateway = Gateway(dsn, app.state.pool, settings.gateway, create_broker(app.state.redis, redis_prefix),
                                        replica=app.state.catalog.replica)
            await app.state.gateway.start()
            stack.push_async_callback(app.state.gateway.stop)
            from server.gateway.eta_board import EtaBoard  # delivery-time quotes at search

            app.state.eta_board = EtaBoard(settings.gateway, app.state.gateway).start()
            stack.callback(app.state.eta_board.stop)
            app.state.ops_feed = stack.enter_context(ops.ops_feed())
            if settings.stats_file:
                gateway, process_counters = app.state.gateway, app.state.process_counters
                stack.callback(StatsFile(settings.stats_file,
                                         lambda: {**gateway.stats, **process_counters()}).start().stop)
        stack.callback(app.state.metrics.start())
        log.info("hexdispatch ready (database %s)", db.redact(dsn))
        yield


def open_redis(url: str, max_connections: int, wait_s: float):
    """A Redis client whose calls share at most ``max_connections`` connections; a call finding all of them
    busy waits up to ``wait_s`` for one (then raises ``redis.ConnectionError``, which every caller survives:
    the rate limiter falls back to this process's limits, the broker drops latest-wins messages).

    redis-py's default pool raises "Too many connections" at once instead: a reconnect storm after a front
    door died (hundreds of sockets' rate-limit checks at once) turned into failures.
    """
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=wait_s,
                                                   socket_connect_timeout=5.0)
    return aioredis.Redis.from_pool(pool)


def _connect_ray(settings: Settings):
    """Join the configured Ray cluster, or start a local one; return how to let go of it."""
    import ray

    if ray.is_initialized():
        return lambda: None
    with _server_keeps_sigterm():
        if not settings.ray_address:
            return start_local_ray()
        ray.init(address=settings.ray_address, logging_level="WARNING", log_to_driver=False)
    return ray.shutdown


@contextlib.contextmanager
def _server_keeps_sigterm():
    """Keep the SIGTERM handler in place across ``ray.init``.

    A Ray driver installs its own SIGTERM handler, which exits the process on
    the spot. That skipped uvicorn's graceful shutdown: sockets were cut
    without a close frame and the lifespan's cleanup never ran, on the
    signal every process supervisor (systemd, Kubernetes) stops a server with.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def start_local_ray() -> Callable[[], None]:
    """Start a Ray of our own on this machine (never join one some other program left running); return its
    stop, which leaves none of its processes behind (``server.local_ray``).

    Its workers, the cell actors, run at normal priority
    (:func:`server.local_ray.workers_at_normal_priority`); set
    ``RAY_worker_niceness`` to override.
    """
    import ray

    local_ray.workers_at_normal_priority()
    # Cells' logs stay in Ray's log files and dashboard; streaming every line into the front door costs it CPU.
    ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING",
             log_to_driver=False)
    directory = local_ray.session_dir()
    return lambda: local_ray.stop_local_ray(directory)


def create_app(settings: Settings | None = None) -> Starlette:
    """A hexdispatch ASGI app; resources open when its lifespan starts. Its process logs no bearer tokens."""
    install_log_redaction()
    app = Starlette(routes=routes(), exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan,
                    middleware=[Middleware(RequestMetrics)])
    app.state.settings = settings or Settings.from_env()
    app.state.metrics = FrontDoorMetrics(app)
    #: Delivery-time quotes at search (``server.gateway.eta_board``): started with live dispatch (Ray).
    app.state.eta_board = None
    return app
