"""Rate limits per principal: in memory for one process, in Redis when several share the load.

A limit is ``rate`` actions per second with bursts up to ``burst``, keyed by
what is limited and who does it (``"ws-connect:driver:d-17"``). The Redis
limiter runs GCRA (the generic cell rate algorithm, a token bucket stored as
one timestamp) in a Lua script against Redis's own clock, so every front door
draws on the same budget whatever its clock says. If Redis fails, the
limiter falls back to this process's own buckets rather than refusing or
admitting everything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from wire import TokenBucket

log = logging.getLogger("hexdispatch.ratelimit")


@dataclass(frozen=True)
class Limit:
    rate: float
    """Sustained actions per second."""
    burst: float
    """Most actions at once after a quiet spell."""


class LocalRateLimiter:
    """Token buckets in this process (one process, or the fallback when Redis is away)."""

    def __init__(self, max_keys: int = 100_000):
        self.buckets: dict[str, TokenBucket] = {}
        self.max_keys = max_keys

    async def allow(self, key: str, limit: Limit) -> bool:
        return self.allow_now(key, limit, time.monotonic())

    def allow_now(self, key: str, limit: Limit, now: float) -> bool:
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_keys:  # forget the oldest half rather than grow without bound
                for old in list(self.buckets)[: self.max_keys // 2]:
                    del self.buckets[old]
            bucket = self.buckets[key] = TokenBucket(limit.rate, limit.burst)
        return bucket.allow(now)


# KEYS[1]: the bucket; ARGV: rate (per s), burst. The key holds the "theoretical arrival time"
# of the next action; an action is allowed if, after it, that time is at most burst/rate ahead.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = 1 / tonumber(ARGV[1])
local horizon = tonumber(ARGV[2]) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now > horizon + 1e-9 then
  return 0
end
redis.call('SET', KEYS[1], string.format('%.6f', next_tat), 'PX', math.ceil((next_tat - now) * 1000) + 1)
return 1
"""


class RedisRateLimiter:
    """Limits shared by every process using the same Redis."""

    def __init__(self, redis, prefix: str):
        self.redis = redis
        self.prefix = prefix
        self.script = redis.register_script(GCRA_LUA)
        self.fallback = LocalRateLimiter()
        self.failing = False
        """Whether the last call fell back; an outage is logged once when it starts and once when it ends."""

    async def allow(self, key: str, limit: Limit) -> bool:
        try:
            allowed = bool(await self.script(keys=[self.prefix + key], args=[limit.rate, limit.burst]))
        except Exception as exc:
            if not self.failing:
                log.warning("redis rate limiter unavailable (%s); using this process's limits", exc)
            self.failing = True
            return await self.fallback.allow(key, limit)
        if self.failing:
            log.warning("redis rate limiter available again")
            self.failing = False
        return allowed


def create_rate_limiter(redis, prefix: str = "hexdispatch:") -> LocalRateLimiter | RedisRateLimiter:
    """Limits shared through Redis (keys under ``prefix``) when configured, else this process's own."""
    return RedisRateLimiter(redis, prefix + "rl:") if redis is not None else LocalRateLimiter()


@dataclass(frozen=True)
class RateLimits:
    """The limits a front door enforces per principal, across every front door sharing Redis."""

    ws_connect: Limit = Limit(1.0, 10.0)
    """Websockets opened per principal (past it, a reconnect loop's handshakes are answered 429)."""
    ws_message: Limit = Limit(5.0, 20.0)
    """Frames other than GPS per principal, over all its sockets."""
    order_placement: Limit = Limit(2.0, 20.0)
    """``POST /v1/orders`` per customer (retries with the same Idempotency-Key included)."""
    gps: Limit = Limit(2.0, 10.0)
    """GPS fixes per socket, counted in the socket's own bucket: a driver has one live socket in
    the whole fleet (``server.broker`` sessions), so that is also a limit per driver. Raised only
    for capacity benchmarks (``HEXDISPATCH_GPS_RATE``)."""
