"""``hexdispatch serve``: run the server on embedded defaults or on configured services.

With no ``DATABASE_URL`` an embedded Postgres is started under
``.hexdispatch/pgdata`` (its data survives restarts); with no ``RAY_ADDRESS``
a local Ray is started. Both are stopped on Ctrl-C or SIGTERM, after a
graceful shutdown.

``--workers N`` runs N front-door processes on the same port (uvicorn's
process manager). They share one Ray (started here unless ``RAY_ADDRESS``
names a cluster), one Postgres, and Redis (``REDIS_URL``, required for N > 1),
which carries positions, driver sessions and rate limits between them. Their
Prometheus figures are added up across them (``server.metrics``, multiprocess mode).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile

from server.config import SECRET_FILE, Settings, SettingsError, workers_from_env
from server.db import EmbeddedPostgres, migrate_sync, redact
from server.frame_sink import PROTOCOL as FRAME_SINK_PROTOCOL
from server.http_limits import PROTOCOL as HTTP_LIMITS_PROTOCOL
from server.local_ray import bind_local_ray_to
from server.log_redaction import install_log_redaction
from server.metrics import MULTIPROCESS_ENV
from server.cli import parser_for
import wire


def main(argv: list[str]) -> int:
    parser = parser_for("hexdispatch serve", __doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (a loopback one: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port of the HTTP API and websockets")
    parser.add_argument("--workers", type=int, default=workers_from_env(),
                        help="front-door processes on this port (N > 1 needs REDIS_URL; "
                             "default: HEXDISPATCH_WORKERS, else 1)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's and hexdispatch's log level")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
    install_log_redaction()

    settings = Settings.from_env()
    if args.workers > 1 and not settings.redis_url:
        parser.error("--workers N > 1 needs REDIS_URL: front doors share positions, sessions and rate limits there")
    if settings.database_url:
        check_database_reachable(settings.database_url)
    if settings.redis_url:
        check_redis_reachable(settings.redis_url)

    import uvicorn

    from server.app import create_app

    if settings.use_ray and not settings.ray_address:
        bind_local_ray_to(args.host)  # before anything imports Ray
    embedded = None
    release_ray = None
    ray_dashboard = None
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found: exit
    # normally then, so that the ``finally`` below still stops the embedded Postgres and Ray.
    signal.signal(signal.SIGTERM, _exit_normally)
    stack = contextlib.ExitStack()
    try:
        if settings.database_url is None:
            embedded = EmbeddedPostgres(settings.home / "pgdata")
            settings = settings.with_(database_url=embedded.start())
            os.environ["DATABASE_URL"] = settings.database_url
        migrate_sync(settings.database_url)
        settings = settings.with_(migrate_on_start=False)
        settings.resolved_jwt_secret()  # create the local secret before anyone asks for a token
        if settings.use_ray and not settings.ray_address:
            # Started here, not by the app, so that its dashboard's address can be printed; the app finds it running.
            release_ray, ray_dashboard = _start_shared_ray()
            signal.signal(signal.SIGTERM, _exit_normally)  # a Ray driver installs its own, which exits on the spot
        # A stop waits at most GRACEFUL_SHUTDOWN_S for open requests and sockets (supervisors kill soon after).
        options = dict(host=args.host, port=args.port, log_level=args.log_level, lifespan="on",
                       timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, **WEBSOCKET_OPTIONS)
        print(banner(args.host, args.port, settings, ray_dashboard, token_auth=_ray_token_auth()), flush=True)
        if args.workers == 1:
            uvicorn.run(create_app(settings), **options)
        else:
            os.environ["HEXDISPATCH_MIGRATE_ON_START"] = "0"  # done above, once
            metrics_dir = stack.enter_context(_shared_metrics_dir())
            logging.getLogger("hexdispatch.serve").info("workers share their Prometheus figures in %s", metrics_dir)
            uvicorn.run("server.app:create_app", factory=True, workers=args.workers, **options)
    finally:
        stack.close()
        if release_ray is not None:
            release_ray()
        if embedded is not None:
            embedded.stop()
    return 0


def check_database_reachable(dsn: str, timeout_s: float = 5.0) -> None:
    """Connect to ``dsn`` once; :class:`SettingsError` (one line, within ``timeout_s``) when that fails."""
    import asyncio

    import asyncpg

    async def connect() -> None:
        conn = await asyncpg.connect(dsn, timeout=timeout_s)
        await conn.close()

    try:
        asyncio.run(asyncio.wait_for(connect(), timeout_s + 1))
    except Exception as exc:  # refused, unknown host, no such database, bad password, unparsable DSN...
        raise SettingsError(f"DATABASE_URL: cannot connect to {redact(dsn)}: {_one_line(exc)}") from None


def check_redis_reachable(url: str, timeout_s: float = 5.0) -> None:
    """Ping the Redis at ``url`` once; :class:`SettingsError` (one line, within ``timeout_s``) when that fails."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        raise SettingsError(f"REDIS_URL: cannot reach {url.split('@')[-1]}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def banner(host: str, port: int, settings: Settings, ray_dashboard: str | None, token_auth: bool) -> str:
    """What a newcomer needs once the server is up: where the API, the ops map, the metrics and Ray's dashboard
    are, how to log in to each, and how to reach the command line."""
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if ray_dashboard:
        login = ("Ray's token auth: paste what `.venv/bin/ray get-auth-token` prints when the page asks" if token_auth
                 else "no login needed")
        ray_line = f"{ray_dashboard}   ({login})"
    elif settings.ray_address:
        ray_line = (f"the cluster's at RAY_ADDRESS={settings.ray_address} (port 8265 of its head; "
                    "`ray get-auth-token` there prints its login token)")
    else:
        ray_line = "none (Ray not used)"
    secret = "HEXDISPATCH_JWT_SECRET" if settings.jwt_secret else str((settings.home / SECRET_FILE).absolute())
    rows = [
        ("API", f"{base}/v1   (health: {base}/v1/health; see README.md, HTTP API)"),
        ("ops map", f"{base}/ops   (admin token: hexdispatch token --role admin --sub ops)"),
        ("metrics", f"{base}/metrics   (Prometheus text format)"),
        ("Ray dashboard", ray_line),
        ("tokens", f"hexdispatch token --role ROLE --sub ID, run here (signs with {secret})"),
        ("CLI", "`.venv/bin/hexdispatch`, or `source .venv/bin/activate` first for `hexdispatch`"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(["hexdispatch serve is starting:"] + [f"  {name.ljust(width)}  {text}" for name, text in rows])


def _ray_token_auth() -> bool:
    """Whether the Ray this process joined asks for Ray's auth token (Ray 2.60 turns it on for new local clusters)."""
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"


#: Longest a stop waits for open requests and sockets, seconds (Kubernetes' default grace is 30 s).
GRACEFUL_SHUTDOWN_S = 20.0


def _exit_normally(signum, frame) -> None:
    raise SystemExit(0)


#: Drivers prove they are alive with GPS every few seconds (and cells act on their silence), so
#: keepalive pings only need to catch dead customer sockets: once a minute, not uvicorn's every 20 s,
#: which at 10,000 sockets would be 500 pings a second each way.
#: ``ws``: uvicorn's websocket protocol plus the GPS fast path (``server.frame_sink``).
#: ``http``: uvicorn's httptools protocol refusing oversized request heads, websocket upgrades
#: included (``server.http_limits``: 414/431).
WEBSOCKET_OPTIONS = {"ws": FRAME_SINK_PROTOCOL, "ws_max_size": wire.MAX_TRANSPORT_BYTES, "ws_ping_interval": 60.0,
                     "ws_ping_timeout": 30.0, "http": HTTP_LIMITS_PROTOCOL}


@contextlib.contextmanager
def _shared_metrics_dir():
    """A fresh directory for prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, read by
    every worker's ``server.metrics``): each scrape, whichever worker answers it, adds up every worker's
    figures. Removed when the server stops."""
    with tempfile.TemporaryDirectory(prefix="hexdispatch-metrics-") as directory:
        previous = os.environ.get(MULTIPROCESS_ENV)
        os.environ[MULTIPROCESS_ENV] = directory
        try:
            yield directory
        finally:
            if previous is None:
                os.environ.pop(MULTIPROCESS_ENV, None)
            else:
                os.environ[MULTIPROCESS_ENV] = previous


def _start_shared_ray():
    """Start a local Ray here and point the worker processes at it (``RAY_ADDRESS``); return its stop and its
    dashboard's URL (None without a dashboard)."""
    import ray

    from server.app import start_local_ray

    stop = start_local_ray()
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logging.getLogger("hexdispatch.serve").info("local Ray at %s shared by the workers", os.environ["RAY_ADDRESS"])
    dashboard = ray._private.worker.get_dashboard_url()
    return stop, (f"http://{dashboard}" if dashboard and "://" not in dashboard else dashboard or None)
