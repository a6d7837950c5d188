"""A websocket link to hexdispatch that reconnects with back-off and calls back on every (re)connect.

Frames are msgpack. What a close (or a refused handshake) means for reconnecting
(``reconnect_delay``):

* 1008 (policy violation), 4000 (replaced by a newer socket of the same
  driver), HTTP 401/403: final; retrying would only repeat the refusal.
* 1013 (try again later: this client fell behind), 1012 (service restart),
  HTTP 429/503: the server is busy; back off from at least ``BUSY_FLOOR_S``.
* anything else (connection lost or refused, 1001 going away, 1011): back off
  from ``min_backoff_s``.

Back-off is exponential with full jitter (the delay is uniform between 0 and
the current step, which doubles per failed attempt up to ``max_backoff_s``):
when a front door dies, its hundreds of sockets spread their reconnects over
the whole step instead of arriving together in waves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Awaitable, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import msgpack
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

log = logging.getLogger("hexdispatch.clients")

FINAL_CLOSE_CODES = {1008, 4000}  # policy violation; replaced by a newer socket of the same driver
FINAL_HTTP_STATUSES = {401, 403}
BUSY_CLOSE_CODES = {1012, 1013}  # service restart; try again later
BUSY_HTTP_STATUSES = {429, 503}
#: Smallest back-off step after the server said it is busy, seconds.
BUSY_FLOOR_S = 1.0


def reconnect_delay(attempt: int, busy: bool, min_backoff_s: float, max_backoff_s: float,
                    rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect ``attempt`` (0 for the first after a connection ended): uniform over
    [0, step], the step doubling per attempt from ``min_backoff_s`` (from ``BUSY_FLOOR_S`` at least when the
    server said it is ``busy``) up to ``max_backoff_s``."""
    base = max(min_backoff_s, BUSY_FLOOR_S) if busy else min_backoff_s
    step = min(max_backoff_s, base * 2 ** min(attempt, 32))
    return (rng or random).uniform(0.0, step)


def ws_url(base_url: str, path: str, token: str) -> str:
    """``http://host:port`` + path -> ``ws://host:port/path?token=...``."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, path, urlencode({"token": token}), ""))


class Link:
    """Keeps one websocket open; received messages go to ``inbox``."""

    def __init__(self, url: str, on_connect: Callable[[], Awaitable[None]] | None = None,
                 min_backoff_s: float = 0.1, max_backoff_s: float = 5.0):
        self.url = url
        self.on_connect = on_connect
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.closed_for_good: int | None = None
        self.connections = 0
        self._socket = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self, timeout_s: float = 30.0) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self.connected.wait(), timeout_s)

    async def stop(self, graceful: bool = True) -> None:
        """Close for good: with the closing handshake, or (``graceful=False``) by dropping the connection."""
        self._stopping = True
        if self._socket is not None:
            with contextlib.suppress(Exception):
                if graceful:
                    await self._socket.close()
                else:
                    self._socket.transport.abort()
        if self._task is not None:
            self._task.cancel()
            # Wait for it to end without taking on its outcome; a cancellation of the caller still propagates.
            await asyncio.wait({self._task})
            if not self._task.cancelled():
                self._task.exception()  # retrieved: a failed link needs no "never retrieved" warning

    async def drop(self) -> None:
        """Cut the connection as a phone losing signal would; the link reconnects by itself."""
        if self._socket is not None:
            with contextlib.suppress(Exception):
                self._socket.transport.abort()

    async def send(self, message: dict) -> None:
        """Send now if connected; otherwise wait for the reconnect."""
        while True:
            await self.connected.wait()
            try:
                await self._socket.send(msgpack.packb(message, use_bin_type=True))
                return
            except (ConnectionClosed, AttributeError):
                await asyncio.sleep(0.05)

    async def send_raw(self, frame: bytes | str) -> None:
        await self.connected.wait()
        await self._socket.send(frame)

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            busy = False
            connected_at = None
            try:
                async with connect(self.url, max_size=2**20, open_timeout=10, compression=None,
                                   ping_interval=60, ping_timeout=30) as socket:
                    self._socket = socket
                    self.connections += 1
                    connected_at = asyncio.get_running_loop().time()
                    self.connected.set()
                    if self.on_connect is not None:
                        await self.on_connect()
                    async for frame in socket:
                        message = msgpack.unpackb(frame) if isinstance(frame, bytes) else {"type": "text", "text": frame}
                        await self.inbox.put(message)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                if code in FINAL_CLOSE_CODES:
                    self.closed_for_good = code
                    await self.inbox.put({"type": "closed", "code": code})
                    return
                busy = code in BUSY_CLOSE_CODES
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in FINAL_HTTP_STATUSES:
                    self.closed_for_good = status
                    await self.inbox.put({"type": "closed", "code": status})
                    return
                busy = status in BUSY_HTTP_STATUSES
            except (OSError, asyncio.TimeoutError):
                pass
            finally:
                self.connected.clear()
                self._socket = None
            if self._stopping:
                return
            # A connection that held for a while starts the back-off afresh; one closed at once keeps climbing.
            if connected_at is not None and asyncio.get_running_loop().time() - connected_at >= self.max_backoff_s:
                attempt = 0
            await asyncio.sleep(reconnect_delay(attempt, busy, self.min_backoff_s, self.max_backoff_s))
            attempt += 1
