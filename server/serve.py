"""``hexdispatch serve``: run the server on embedded defaults or on configured services.

With no ``DATABASE_URL`` an embedded Postgres is started under
``.hexdispatch/pgdata`` (its data survives restarts); with no ``RAY_ADDRESS``
a local Ray is started. Both are stopped on Ctrl-C or SIGTERM, after a
graceful shutdown.

``--workers N`` runs N front-door processes on the same port (uvicorn's
process manager). They share one Ray (started here unless ``RAY_ADDRESS``
names a cluster), one Postgres, and Redis (``REDIS_URL``, required for N > 1),
which carries positions, driver sessions and rate limits between them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal

from server.config import Settings
from server.db import EmbeddedPostgres, migrate_sync
from server.frame_sink import PROTOCOL as FRAME_SINK_PROTOCOL
from server.http_limits import PROTOCOL as HTTP_LIMITS_PROTOCOL
from server.local_ray import bind_local_ray_to
from server.log_redaction import install_log_redaction
import wire


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hexdispatch serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("HEXDISPATCH_WORKERS", "1")),
                        help="front-door processes on this port (N > 1 needs REDIS_URL)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
    install_log_redaction()

    import uvicorn

    from server.app import create_app

    settings = Settings.from_env()
    if args.workers > 1 and not settings.redis_url:
        parser.error("--workers N > 1 needs REDIS_URL: front doors share positions, sessions and rate limits there")
    if settings.use_ray and not settings.ray_address:
        bind_local_ray_to(args.host)  # before anything imports Ray
    embedded = None
    release_ray = None
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found:
    # exit normally then, so that the ``finally`` below still stops the embedded Postgres and Ray.
    signal.signal(signal.SIGTERM, _exit_normally)
    try:
        if settings.database_url is None:
            embedded = EmbeddedPostgres(settings.home / "pgdata")
            settings = settings.with_(database_url=embedded.start())
            os.environ["DATABASE_URL"] = settings.database_url
        migrate_sync(settings.database_url)
        settings = settings.with_(migrate_on_start=False)
        settings.resolved_jwt_secret()  # create the local secret before anyone asks for a token
        # A stop waits at most GRACEFUL_SHUTDOWN_S for open requests and sockets (supervisors kill soon after).
        options = dict(host=args.host, port=args.port, log_level=args.log_level, lifespan="on",
                       timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, **WEBSOCKET_OPTIONS)
        if args.workers == 1:
            uvicorn.run(create_app(settings), **options)
        else:
            if settings.use_ray and not settings.ray_address:
                release_ray = _start_shared_ray()
            os.environ["HEXDISPATCH_MIGRATE_ON_START"] = "0"  # done above, once
            uvicorn.run("server.app:create_app", factory=True, workers=args.workers, **options)
    finally:
        if release_ray is not None:
            release_ray()
        if embedded is not None:
            embedded.stop()
    return 0


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


def _start_shared_ray():
    """Start a local Ray here and point the worker processes at it (``RAY_ADDRESS``); return its stop."""
    import ray

    from server.app import start_local_ray

    stop = start_local_ray()
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logging.getLogger("hexdispatch.serve").info("local Ray at %s shared by the workers", os.environ["RAY_ADDRESS"])
    return stop
