"""A websocket link to hexdispatch that reconnects with back-off and calls back on every (re)connect.

Frames are msgpack (``wire``). A close with a code of ``wire.FINAL_CLOSE_CODES`` (1008 policy violation,
1009 too big, 4000 replaced) is final: retrying would only repeat the refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Awaitable, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

import wire
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

log = logging.getLogger("hexdispatch.clients")



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

    async def send(self, message: wire.ClientFrame | dict) -> None:
        """Send now if connected; otherwise wait for the reconnect."""
        while True:
            await self.connected.wait()
            try:
                await self._socket.send(wire.encode(message))
                return
            except (ConnectionClosed, AttributeError):
                await asyncio.sleep(0.05)

    async def send_raw(self, frame: bytes | str) -> None:
        await self.connected.wait()
        await self._socket.send(frame)

    async def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stopping:
            try:
                async with connect(self.url, max_size=2**20, open_timeout=10, compression=None,
                                   ping_interval=60, ping_timeout=30) as socket:
                    self._socket = socket
                    self.connections += 1
                    self.connected.set()
                    backoff = self.min_backoff_s
                    if self.on_connect is not None:
                        await self.on_connect()
                    async for frame in socket:
                        message = wire.load(frame)
                        await self.inbox.put(message)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                if code in wire.FINAL_CLOSE_CODES:
                    self.closed_for_good = code
                    await self.inbox.put({"type": "closed", "code": code})
                    return
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    self.closed_for_good = exc.response.status_code
                    await self.inbox.put({"type": "closed", "code": exc.response.status_code})
                    return
            except (OSError, asyncio.TimeoutError):
                pass
            finally:
                self.connected.clear()
                self._socket = None
            if self._stopping:
                return
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(self.max_backoff_s, backoff * 2)
