"""Per-process catalog caches kept fresh by Postgres notifications: menu responses and the nearby replica.

Migration 0004 announces every change that can alter a menu response or a
nearby search on the ``catalog_changes`` channel (``r:<id>``, ``m:<id>``,
``o:<id>``, ``*``). Each server process holds one listening connection and:

* drops the cached menu of the restaurant named in any notification;
* refetches the restaurants named in ``r:`` notifications into its
  :class:`~server.catalog_replica.CatalogReplica`.

Staleness is bounded: a read that starts after a change's notification has
reached the process never sees the state before it (the delay is the
notification's trip, normally a millisecond or two), and no cached menu is
served past its TTL (:data:`MENU_TTL_S`) whatever happens. A menu whose
restaurant has opening hours also expires at the next minute, since its
``open_now`` may change then. While the listening connection is down, the menu
cache is off and nearby searches go to SQL; once it is back, the replica is
reloaded from scratch (changes may have been missed meanwhile).

Writes made through this process's API are applied locally at once (read
your own writes), before their notification arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable

import asyncpg

from server.catalog_replica import CatalogReplica
from server.listener import ResilientListener
from store import catalog

log = logging.getLogger("hexdispatch.catalog")

CHANNEL = "catalog_changes"
#: Longest a cached menu response is served, seconds (the bound if a notification were ever lost).
MENU_TTL_S = 30.0
#: Bytes of menu responses one process keeps (least recently used first out).
MENU_CACHE_MAX_BYTES = 256 * 2**20
#: Bookkeeping bytes counted per cached menu on top of its body.
ENTRY_OVERHEAD_BYTES = 200
#: How often the listening connection is checked, seconds.
KEEPALIVE_S = 10.0
#: How long startup waits for the first replica load before serving from SQL meanwhile, seconds.
INITIAL_LOAD_WAIT_S = 20.0
#: Beyond this share of the catalog changed at once, the replica reloads everything.
RELOAD_SHARE = 0.1


@dataclass(frozen=True)
class CachedMenu:
    """A rendered menu response and whether it shows a time-dependent ``open_now``."""

    body: bytes
    time_dependent: bool


class MenuCache:
    """Rendered menu responses by restaurant id: LRU, bounded in bytes, with a TTL.

    A load that overlaps an invalidation of its key (or a clear) is served but
    not stored, so an answer read before a change is never cached after it.
    """

    def __init__(self, *, ttl_s: float = MENU_TTL_S, max_bytes: int = MENU_CACHE_MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.enabled = False
        self.hits = self.misses = 0
        self._clock, self._wall = clock, wall
        #: key -> (body, expiry); plain tuples of atomic values, which the cyclic GC stops tracking.
        self._entries: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._epoch = 0
        #: key -> [loads in flight, invalidations seen since the oldest of them started]
        self._flights: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def get(self, key: int, load: Callable[[], Awaitable[CachedMenu | None]]) -> bytes | None:
        """The cached body for ``key``, else ``load()``'s (stored when still current); None if it has none."""
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            if entry[1] > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[0]
            self._drop(key)
        self.misses += 1
        if not self.enabled:
            loaded = await load()
            return None if loaded is None else loaded.body
        wall, epoch = self._wall(), self._epoch
        flight = self._flights.setdefault(key, [0, 0])
        flight[0] += 1
        seen = flight[1]
        try:
            loaded = await load()
        finally:
            flight[0] -= 1
            if flight[0] == 0:
                self._flights.pop(key, None)
        if loaded is None:
            return None
        if self.enabled and epoch == self._epoch and flight[1] == seen:
            lifetime = self.ttl_s
            if loaded.time_dependent:
                lifetime = min(lifetime, 60.0 - wall % 60.0)
            self._store(key, loaded.body, now + lifetime)
        return loaded.body

    def invalidate(self, key: int) -> None:
        """Forget ``key``'s menu (and refuse to store loads of it already in flight)."""
        self._drop(key)
        flight = self._flights.get(key)
        if flight is not None:
            flight[1] += 1

    def clear(self) -> None:
        """Forget everything (and refuse to store any load already in flight)."""
        self._entries.clear()
        self._bytes = 0
        self._epoch += 1

    def enable(self, enabled: bool) -> None:
        """Turn caching on or off; either way, start empty."""
        self.enabled = enabled
        self.clear()

    def _store(self, key: int, body: bytes, expires: float) -> None:
        self._drop(key)
        size = len(body) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        self._entries[key] = (body, expires)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= len(old[0]) + ENTRY_OVERHEAD_BYTES

    def _drop(self, key: int) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0]) + ENTRY_OVERHEAD_BYTES


class CatalogCache:
    """The menu cache and nearby replica of one server process, and the listener that keeps them fresh.

    ``async with CatalogCache(dsn, pool):`` starts listening, loads the replica
    (waiting up to ``initial_load_wait_s`` for it) and stops everything on exit.
    """

    def __init__(self, dsn: str, pool: asyncpg.Pool, *, menu_ttl_s: float = MENU_TTL_S,
                 menu_max_bytes: int = MENU_CACHE_MAX_BYTES, initial_load_wait_s: float = INITIAL_LOAD_WAIT_S,
                 keepalive_s: float = KEEPALIVE_S):
        self.dsn = dsn
        self.pool = pool
        self.menus = MenuCache(ttl_s=menu_ttl_s, max_bytes=menu_max_bytes)
        self.replica = CatalogReplica()
        self.notifications = 0
        self._initial_load_wait_s = initial_load_wait_s
        self._listener: asyncpg.Connection | None = None
        self.listener = ResilientListener(dsn, {CHANNEL: self._on_notify}, on_connect=self._connected,
                                          on_disconnect=self._disconnected, name="catalog notifications",
                                          keepalive_s=keepalive_s)
        self._connection_epoch = 0
        self._reload_wanted = False
        self._dirty: set[int] = set()
        self._written_while_fetching: set[int] | None = None
        self._wake = asyncio.Event()
        self._loaded = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> "CatalogCache":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def connected(self) -> bool:
        return self._listener is not None

    async def start(self) -> None:
        self.listener.start()
        self._tasks = [asyncio.create_task(self._refresh(), name="catalog-refresh")]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._loaded.wait(), self._initial_load_wait_s)
        if not self.replica.ready:
            log.warning("catalog replica not loaded yet; nearby searches use SQL until it is")

    async def stop(self) -> None:
        await self.listener.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self._disconnected()

    # ------------------------------------------------------------------ writes made by this process

    def restaurant_written(self, row: asyncpg.Record) -> None:
        """This process changed a restaurant (``row`` is its new state): show it at once."""
        self.menus.invalidate(row["id"])
        if self.replica.ready:
            self.replica.apply([row["id"]], [row])
        if self._written_while_fetching is not None:
            self._written_while_fetching.add(row["id"])

    def restaurant_erased(self, restaurant_id: int) -> None:
        """This process deleted a restaurant: stop showing it at once."""
        self.menus.invalidate(restaurant_id)
        if self.replica.ready:
            self.replica.apply([restaurant_id], [])
        if self._written_while_fetching is not None:
            self._written_while_fetching.add(restaurant_id)

    def menu_written(self, restaurant_id: int) -> None:
        """This process changed a restaurant's menu."""
        self.menus.invalidate(restaurant_id)

    # ------------------------------------------------------------------ notifications

    def _on_notify(self, connection, pid, channel, payload: str) -> None:
        self.notifications += 1
        kind, _, ident = payload.partition(":")
        if kind == "*" or not ident.isdigit():
            self.menus.clear()
            self.replica.ready = False
            self._reload_wanted = True
            self._wake.set()
            return
        restaurant_id = int(ident)
        self.menus.invalidate(restaurant_id)
        if kind == "r":
            self._dirty.add(restaurant_id)
            self._wake.set()

    async def _connected(self, conn: asyncpg.Connection) -> None:
        """(Re)connected: notifications may have been missed, so the replica reloads and the menus start empty."""
        self._listener = conn
        self._connection_epoch += 1
        self.menus.enable(True)
        self._reload_wanted = True
        self._wake.set()

    def _disconnected(self) -> None:
        if self._listener is None:
            return
        self._listener = None
        self._connection_epoch += 1
        self.menus.enable(False)
        self.replica.ready = False

    # ------------------------------------------------------------------ replica upkeep

    async def _refresh(self) -> None:
        """Reload the replica when asked; refetch restaurants named by notifications."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.connected:
                continue
            epoch = self._connection_epoch
            try:
                if self._reload_wanted or len(self._dirty) > RELOAD_SHARE * max(len(self.replica), 1000):
                    self._reload_wanted = False
                    self._dirty.clear()
                    if await self.replica.load(self.pool, lambda: epoch == self._connection_epoch):
                        self.replica.ready = True
                        self._loaded.set()
                        # The replica is hundreds of thousands of long-lived objects: keep them out of
                        # the cyclic GC, whose full collections would otherwise stall requests (~0.2 s).
                        gc.freeze()
                while self._dirty and epoch == self._connection_epoch:
                    await self._refetch()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep serving (from SQL) and try again
                log.exception("catalog replica refresh failed; reloading")
                self.replica.ready = False
                self._reload_wanted = True
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _refetch(self) -> None:
        ids = sorted(self._dirty)
        self._dirty.clear()
        self._written_while_fetching = set()
        try:
            async with self.pool.acquire() as conn:
                rows = await catalog.restaurants_by_id(conn, ids)
            # A local write during the fetch is newer than what we read; its own notification refetches it.
            skip = self._written_while_fetching
        finally:
            self._written_while_fetching = None
        self.replica.apply([i for i in ids if i not in skip], [r for r in rows if r["id"] not in skip])
