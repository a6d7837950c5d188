"""A Postgres ``LISTEN`` that survives losing its connection.

Every notification channel the server follows (``order_events``,
``catalog_changes``) goes through one :class:`ResilientListener`. It holds a
dedicated connection, notices when it is lost (asyncpg's termination
listener, and a periodic ``SELECT 1`` for a connection that died silently),
reconnects with capped exponential back-off plus jitter, issues ``LISTEN``
again and only then calls its owner's ``on_connect`` hook. Notifications sent
while the connection was down are gone for good, so the owner resynchronises
from the tables in that hook: anything committed after the new ``LISTEN`` is
notified, anything before it is in the table, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Awaitable, Callable, Mapping

import asyncpg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_exponential_jitter

log = logging.getLogger("hexdispatch.listener")

Callback = Callable[[asyncpg.Connection, int, str, str], None]


class ResilientListener:
    """One listening connection for ``channels`` (channel -> asyncpg notification callback).

    ``on_connect(conn)`` runs after every (re)connection, once ``LISTEN`` is in
    place; if it fails, the connection is dropped and the attempt counts as
    failed (so a resynchronisation is never skipped). ``on_disconnect()`` runs
    when a held connection is lost.
    """

    def __init__(self, dsn: str, channels: Mapping[str, Callback], *,
                 on_connect: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
                 on_disconnect: Callable[[], None] | None = None, name: str = "listener",
                 keepalive_s: float = 10.0, connect_timeout_s: float = 10.0,
                 initial_backoff_s: float = 0.2, max_backoff_s: float = 5.0):
        self.dsn = dsn
        self.channels = dict(channels)
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.name = name
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.connection: asyncpg.Connection | None = None
        self.connects = 0
        """Successful connections so far (the first one included)."""
        self.failed_attempts = 0
        self.recent_delays: deque[float] = deque(maxlen=32)
        """The back-off waits (seconds) before the latest reconnection attempts."""
        self._connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self.connection is not None

    def start(self) -> None:
        """Start listening in the background (connecting, and reconnecting whenever the connection is lost)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"listen-{self.name}")

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a connection; True if there is one."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        return self.connected

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        while True:
            conn, lost = await self._connect()
            try:
                await self._hold(conn, lost)
            finally:
                self.connection = None
                self._connected.clear()
                if self.on_disconnect is not None:
                    self.on_disconnect()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
            log.warning("%s: connection lost; reconnecting", self.name)

    async def _connect(self) -> tuple[asyncpg.Connection, asyncio.Event]:
        """A listening connection, its owner resynchronised; retried with back-off until it works."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception), stop=stop_never, before_sleep=self._note_failure,
            wait=wait_exponential_jitter(initial=self.initial_backoff_s, max=self.max_backoff_s,
                                         jitter=self.initial_backoff_s),
        )
        async for attempt in retrying:
            with attempt:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout_s)
                try:
                    lost = asyncio.Event()
                    conn.add_termination_listener(lambda _conn: lost.set())
                    for channel, callback in self.channels.items():
                        await conn.add_listener(channel, callback)
                    self.connection = conn
                    if self.on_connect is not None:
                        await self.on_connect(conn)
                except BaseException:
                    self.connection = None
                    conn.terminate()
                    raise
        self.connects += 1
        self._connected.set()
        return conn, lost

    def _note_failure(self, state: RetryCallState) -> None:
        self.failed_attempts += 1
        delay = state.next_action.sleep if state.next_action else 0.0
        self.recent_delays.append(delay)
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s: cannot listen (%s: %s); retrying in %.2f s", self.name, type(exc).__name__, exc, delay)

    async def _hold(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return once the connection is lost (closed, or not answering a keepalive in time)."""
        while not lost.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lost.wait(), self.keepalive_s)
            if not lost.is_set():
                try:
                    await asyncio.wait_for(conn.execute("SELECT 1"), self.keepalive_s)
                except (asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    return
