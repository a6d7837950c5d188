"""Messages between front-door processes: in memory for one process, Redis pub/sub for many.

The convention is Centrifugo's: a single node needs no broker, several nodes
share Redis. What crosses processes this way is what may be lost without
harm, because something lossless stands behind it:

* driver positions for the customers following an order (latest-wins: the
  next fix replaces a lost one), on channel ``order:<id>``;
* driver sessions (``sessions``): a driver's newest socket, wherever it
  lands, closes its older one on any other front door.

Order status events do not go through the broker: they travel by Postgres
``LISTEN/NOTIFY`` from the same transaction that writes them, with gaps
filled from ``order_events``, so they stay lossless (see ``server.gateway``).

Both brokers have the same interface, and a message reaches the publishing
process's own handler at once, never through Redis (the customers of most
orders are on the driver's front door; a round trip through Redis and back
would add two event-loop turns to every position). ``publish`` never blocks
the caller: the Redis broker sends everything queued since its last round
trip in one pipeline, so a burst of positions costs one round trip, not one
per message, and drops its own messages when Redis hands them back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Callable

import msgpack

log = logging.getLogger("hexdispatch.broker")

Handler = Callable[[dict], None]


class LocalBroker:
    """One process: a published message goes straight to this process's handler of its channel."""

    def __init__(self):
        self.handlers: dict[str, Handler] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.handlers.clear()

    def subscribe(self, channel: str, handler: Handler) -> None:
        self.handlers[channel] = handler

    def unsubscribe(self, channel: str) -> None:
        self.handlers.pop(channel, None)

    def publish(self, channel: str, message: dict) -> None:
        handler = self.handlers.get(channel)
        if handler is not None:
            handler(message)


class RedisBroker:
    """Redis pub/sub shared by every front door; channels are prefixed with ``prefix``."""

    def __init__(self, redis, prefix: str = "hexdispatch:"):
        self.redis = redis
        self.prefix = prefix
        #: Tags this process's messages on the wire, so it can skip them when Redis echoes them back.
        self.origin = uuid.uuid4().hex[:12]
        self.handlers: dict[str, Handler] = {}
        self.pubsub = None
        self._outgoing: list[tuple[str, bytes]] = []
        self._subscribe: set[str] = set()
        self._unsubscribe: set[str] = set()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.stats = {"published": 0, "received": 0, "round_trips": 0}

    async def start(self) -> None:
        """Subscribe to the channels registered so far and start reading and writing."""
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        subscribe, self._subscribe = self._subscribe, set()
        if subscribe:
            await self.pubsub.subscribe(*(self.prefix + c for c in subscribe))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop()), loop.create_task(self._write_loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pubsub is not None:
            await self.pubsub.aclose()

    def subscribe(self, channel: str, handler: Handler) -> None:
        new = channel not in self.handlers
        self.handlers[channel] = handler
        if new:
            self._unsubscribe.discard(channel)
            self._subscribe.add(channel)
            self._wakeup.set()

    def unsubscribe(self, channel: str) -> None:
        if self.handlers.pop(channel, None) is not None:
            self._subscribe.discard(channel)
            self._unsubscribe.add(channel)
            self._wakeup.set()

    def publish(self, channel: str, message: dict) -> None:
        handler = self.handlers.get(channel)
        if handler is not None:
            self._handle(channel, handler, message)
        self._outgoing.append((self.prefix + channel, msgpack.packb((self.origin, message))))
        self._wakeup.set()

    def _handle(self, channel: str, handler: Handler, message: dict) -> None:
        try:
            handler(message)
        except Exception:
            log.exception("broker: handler of %s failed", channel)

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            subscribe, self._subscribe = self._subscribe, set()
            unsubscribe, self._unsubscribe = self._unsubscribe, set()
            outgoing, self._outgoing = self._outgoing, []
            try:
                if subscribe:
                    await self.pubsub.subscribe(*(self.prefix + c for c in subscribe))
                if unsubscribe:
                    await self.pubsub.unsubscribe(*(self.prefix + c for c in unsubscribe))
                if outgoing:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for channel, data in outgoing:
                            pipe.publish(channel, data)
                        await pipe.execute()
                    self.stats["published"] += len(outgoing)
                    self.stats["round_trips"] += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                # Positions are latest-wins and sessions are re-announced on reconnect: drop, do not queue.
                log.warning("redis broker: %d messages dropped", len(outgoing), exc_info=True)
                self._subscribe |= {c for c in subscribe if c in self.handlers}
                self._unsubscribe |= {c for c in unsubscribe if c not in self.handlers}
                await asyncio.sleep(0.5)
                if self._subscribe or self._unsubscribe:
                    self._wakeup.set()

    async def _read_loop(self) -> None:
        skip = len(self.prefix)
        while True:
            if not self.pubsub.subscribed:  # a pub/sub connection has nothing to read before its first channel
                await asyncio.sleep(0.05)
                continue
            try:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("redis broker: reading failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = (channel.decode() if isinstance(channel, bytes) else channel)[skip:]
            handler = self.handlers.get(channel)
            if handler is None:
                continue
            try:
                origin, payload = msgpack.unpackb(message["data"])
            except Exception:
                log.warning("redis broker: dropped an undecodable message on %s", channel)
                continue
            if origin == self.origin:
                continue  # delivered here when it was published
            self.stats["received"] += 1
            self._handle(channel, handler, payload)


def create_broker(redis, prefix: str = "hexdispatch:") -> LocalBroker | RedisBroker:
    """The broker for this process: Redis (channels under ``prefix``) when configured, else in memory."""
    return RedisBroker(redis, prefix) if redis is not None else LocalBroker()
