"""The seeds' design: every GPS fix goes to Redis, and customers follow their driver through Redis pub/sub.

Per fix: ``GEOADD`` of the driver's position and, while the driver is on an
order's job, ``PUBLISH`` of the position to the order's channel (both in one
pipeline round trip). Customers ``subscribe`` to an order on their socket;
this process holds one pub/sub connection and forwards each published
position to the order's followers. A driver reports the order it is
carrying with ``{"type": "job", "order_id": N}`` (the design's stand-in for
the dispatch it leaves out).

``REDIS_URL`` names the Redis; ``REDIS_PREFIX`` namespaces its keys and
channels (the bench passes a fresh one and the keys are deleted on shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import defaultdict

import msgpack

from bench.baselines import BaselineApp, serve

#: Redis connections shared by all sockets. A command waits for a free one as long as it takes, which
#: holds its socket's reader back: overload becomes TCP back-pressure on the drivers, not errors.
POOL_SIZE = 64


class RedisDesign(BaselineApp):
    def __init__(self, secret: str | None, redis_url: str, prefix: str, stats_file: str | None = None):
        super().__init__(secret, stats_file)
        self.redis_url = redis_url
        self.prefix = prefix
        self.geo_key = f"{prefix}drivers"
        self.jobs: dict[str, int] = {}
        self.followers: dict[str, dict[str, object]] = defaultdict(dict)
        self.stats.update(published=0, positions_out=0)
        self.redis = None
        self.pubsub = None
        self.reader: asyncio.Task | None = None

    async def startup(self) -> None:
        import redis.asyncio as aioredis

        pool = aioredis.BlockingConnectionPool.from_url(self.redis_url, max_connections=POOL_SIZE, timeout=None)
        self.redis = aioredis.Redis(connection_pool=pool)
        await self.redis.ping()
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        # A pub/sub connection must be subscribed to something before it can be read.
        await self.pubsub.subscribe(f"{self.prefix}control")
        self.reader = asyncio.get_running_loop().create_task(self._read_published())

    async def shutdown(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        with contextlib.suppress(Exception):
            await self.redis.delete(self.geo_key)
        await self.redis.aclose()

    def channel(self, order_id: int) -> str:
        return f"{self.prefix}order:{order_id}"

    async def driver_frame(self, driver_id: str, message: dict) -> None:
        kind = message.get("type")
        if kind == "gps":
            lat, lng = float(message["lat"]), float(message["lng"])
            order_id = self.jobs.get(driver_id)
            if order_id is None:
                await self.redis.geoadd(self.geo_key, (lng, lat, driver_id))
            else:
                position = {"type": "driver_position", "order_id": order_id, "driver_id": driver_id, "lat": lat,
                            "lng": lng, "heading": message.get("heading"), "fix_t": message.get("t")}
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.geoadd(self.geo_key, (lng, lat, driver_id))
                    pipe.publish(self.channel(order_id), msgpack.packb(position))
                    await pipe.execute()
                self.stats["published"] += 1
            self.stats["gps"] += 1
        elif kind == "job":
            self.jobs[driver_id] = int(message["order_id"])

    async def customer_frame(self, customer_id: str, message: dict, send) -> None:
        if message.get("type") != "subscribe":
            return
        order_id = int(message["order_id"])
        channel = self.channel(order_id)
        first = not self.followers[channel]
        self.followers[channel][customer_id] = send
        if first:
            await self.pubsub.subscribe(channel)
        await send({"type": "subscribed", "order_id": order_id})

    async def customer_gone(self, customer_id: str) -> None:
        for channel in [c for c, who in self.followers.items() if customer_id in who]:
            del self.followers[channel][customer_id]
            if not self.followers[channel]:
                del self.followers[channel]
                await self.pubsub.unsubscribe(channel)

    async def _read_published(self) -> None:
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()
            position = {**msgpack.unpackb(message["data"]), "t": time.time()}
            for send in list(self.followers.get(channel, {}).values()):
                with contextlib.suppress(Exception):  # a socket that just closed
                    await send(position)
                    self.stats["positions_out"] += 1


def create_app() -> RedisDesign:
    return RedisDesign(os.environ.get("HEXDISPATCH_JWT_SECRET") or None,
                       os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                       os.environ.get("REDIS_PREFIX", f"hexdispatch-bench:{os.getpid()}:"),
                       os.environ.get("BENCH_STATS_FILE"))


if __name__ == "__main__":
    serve(create_app(), sys.argv[1:])
