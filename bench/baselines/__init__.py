"""Comparison servers for ``hexdispatch bench peak``, each one websocket process under uvicorn.

Both speak enough of hexdispatch's protocol for the same load generator:
drivers send msgpack ``gps`` frames on ``/v1/ws/driver``, customers send
``subscribe`` on ``/v1/ws/customer``, tokens come in ``?token=``. Each
answers ``GET /stats`` with its counters and ``GET /v1/health``. A flooded
event loop answers HTTP late, so the counters are also written, with the
time, to ``BENCH_STATS_FILE`` every 0.2 s by a thread of their own.

* :mod:`bench.baselines.ceiling`: receive and decode, nothing else (the bare ceiling);
* :mod:`bench.baselines.redis_design`: the seeds' design, every fix to Redis
  (GEOADD, and PUBLISH to the order's channel, which customers follow through
  Redis pub/sub).

They run with the same uvicorn options as ``hexdispatch serve``, its frame
sink included (``server.frame_sink``): a design whose per-frame work needs
no ``await`` (the ceiling's) takes driver frames as uvicorn parses them, as
hexdispatch does its GPS fixes. So a ratio measures what each design does per
frame, not the choice of web server or of the way frames reach the app.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Awaitable, Callable, Iterator
from urllib.parse import parse_qs

import msgpack
import orjson

from clients.http import stop_process, wait_until_healthy
from server.frame_sink import frame_sink
from server.serve import WEBSOCKET_OPTIONS
from server.stats_file import StatsFile

REPO = Path(__file__).resolve().parents[2]
#: uvicorn options shared with ``hexdispatch serve`` (server/serve.py).
UVICORN_OPTIONS = {"lifespan": "on", **WEBSOCKET_OPTIONS, "log_level": "warning"}


class BaselineApp:
    """A raw ASGI app: the websocket endpoints call :meth:`driver_frame` / :meth:`customer_frame` per frame."""

    def __init__(self, secret: str | None, stats_file: str | None = None):
        self.secret = secret
        self.stats = {"pid": os.getpid(), "frames": 0, "gps": 0, "drivers_connected": 0, "customers_connected": 0}
        self.stats_file = stats_file
        if stats_file:
            StatsFile(stats_file, lambda: dict(self.stats)).start()

    async def startup(self) -> None:
        """Open what the design needs (override)."""

    async def shutdown(self) -> None:
        """Close it (override)."""

    async def driver_frame(self, driver_id: str, message: dict) -> None:
        """One decoded driver frame (override)."""

    #: A design whose driver frames need no ``await`` sets this: frames then come to
    #: :meth:`take_driver_frame` as uvicorn parses them, not through ``receive()``.
    takes_frames_synchronously = False

    def take_driver_frame(self, driver_id: str, message: dict) -> None:
        """One decoded driver frame, taken synchronously (override with ``takes_frames_synchronously``)."""

    async def customer_frame(self, customer_id: str, message: dict, send: Callable[[dict], Awaitable[None]]) -> None:
        """One decoded customer frame; ``send`` writes a frame back (override)."""

    async def customer_gone(self, customer_id: str) -> None:
        """The customer's socket closed (override)."""

    def principal(self, scope) -> str | None:
        """The token's subject (verified when a secret is configured), else None: refuse."""
        token = (parse_qs(scope.get("query_string", b"").decode()).get("token") or [""])[0]
        if self.secret is None:
            return token or "anonymous"
        from server.auth import verify_token
        from server.errors import ApiError

        try:
            return verify_token(self.secret, token).sub
        except ApiError:
            return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope, send) -> None:
        status, body = (200, orjson.dumps(self.stats)) if scope["path"] in ("/stats", "/v1/health") else (404, b"{}")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def _websocket(self, scope, receive, send) -> None:
        await receive()  # websocket.connect
        sub = self.principal(scope)
        path = scope["path"]
        if sub is None or path not in ("/v1/ws/driver", "/v1/ws/customer"):
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        driver = path == "/v1/ws/driver"
        counter = "drivers_connected" if driver else "customers_connected"
        self.stats[counter] += 1

        async def reply(message: dict) -> None:
            await send({"type": "websocket.send", "bytes": msgpack.packb(message)})

        sink = frame_sink(scope) if driver and self.takes_frames_synchronously else None
        if sink is not None:
            def take(frame: bytes) -> bool:
                try:
                    message = msgpack.unpackb(frame)
                except Exception:
                    return False  # receive() gets it, and fails on it there
                self.stats["frames"] += 1
                self.take_driver_frame(sub, message)
                return True

            sink.take = take
        try:
            while True:
                event = await receive()
                if event["type"] == "websocket.disconnect":
                    return
                frame = event.get("bytes")
                if frame is None:
                    continue
                message = msgpack.unpackb(frame)
                self.stats["frames"] += 1
                if driver:
                    await self.driver_frame(sub, message)
                else:
                    await self.customer_frame(sub, message, reply)
        finally:
            if sink is not None:
                sink.take = None
            self.stats[counter] -= 1
            if not driver:
                await self.customer_gone(sub)


def serve(app: BaselineApp, argv: list[str]) -> None:
    """Run ``app`` under uvicorn on ``--port`` (the baselines' ``__main__``)."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(app, host=args.host, port=args.port, **UVICORN_OPTIONS)


@contextlib.contextmanager
def running(module: str, port: int, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen, str]]:
    """``python -m module --port port`` until the block ends; yields (base URL, process, its stats file)."""
    with tempfile.TemporaryDirectory(prefix="hexdispatch-baseline-") as scratch:
        stats_file = str(Path(scratch) / "stats.json")
        process = subprocess.Popen([sys.executable, "-m", module, "--port", str(port)], cwd=REPO,
                                   env={**os.environ, "PYTHONPATH": str(REPO), "BENCH_STATS_FILE": stats_file,
                                        **(env or {})})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(url, process, timeout_s=60)
            yield url, process, stats_file
        finally:
            stop_process(process, timeout_s=15)
