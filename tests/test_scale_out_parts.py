"""The pieces several front doors share: the broker and the rate limiter, against a real Redis."""

import asyncio
import logging
import os
import shutil
import uuid

import pytest

from server.broker import LocalBroker, RedisBroker
from server.ratelimit import Limit, LocalRateLimiter, RedisRateLimiter
from server.app import open_redis
from tests.waiting import DEADLINE_S, eventually

#: Connections in the small pool a burst is run against: far fewer than the calls at once.
SMALL_POOL = 4


@pytest.fixture
async def redis_clients():
    """Two independent Redis clients (as two processes would have), or a skip without Redis."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("needs REDIS_URL")
    import redis.asyncio as aioredis

    clients = [aioredis.from_url(url), aioredis.from_url(url)]
    yield clients
    for client in clients:
        await client.aclose()


def test_local_limiter_allows_a_burst_then_the_rate():
    limiter, limit = LocalRateLimiter(), Limit(rate=2.0, burst=3.0)
    assert [limiter.allow_now("k", limit, 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow_now("k", limit, 0.5) and not limiter.allow_now("k", limit, 0.5)
    assert limiter.allow_now("other", limit, 0.5), "keys are independent"


async def test_redis_limit_is_shared_by_two_processes(redis_clients):
    prefix = f"test-{uuid.uuid4().hex}:"
    first, second = (RedisRateLimiter(client, prefix) for client in redis_clients)
    limit = Limit(rate=0.5, burst=4.0)
    results = [await (first if i % 2 else second).allow("customer-1", limit) for i in range(8)]
    assert results == [True] * 4 + [False] * 4
    assert await first.allow("customer-2", limit)
    # One token comes back after 2 s at 0.5/s (a refused call takes none); right after it is used, none is left.
    await eventually(lambda: second.allow("customer-1", limit), interval_s=0.2, what="a token back")
    assert not await first.allow("customer-1", limit)


async def test_redis_limiter_falls_back_to_local_limits_when_redis_is_away():
    import redis.asyncio as aioredis

    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    limiter = RedisRateLimiter(dead, "test:")
    limit = Limit(rate=0.1, burst=2.0)
    assert [await limiter.allow("k", limit) for _ in range(3)] == [True, True, False]
    await dead.aclose()


@pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server to restart one of its own")
async def test_redis_limiter_logs_an_outage_once_and_shares_limits_again_after_a_restart(tmp_path, caplog):
    import redis.asyncio as aioredis

    from bench.chaos_env import OwnRedis

    server = OwnRedis(tmp_path).start()
    client = aioredis.from_url(server.url, socket_connect_timeout=1)
    try:
        limiter, limit = RedisRateLimiter(client, "test:"), Limit(rate=0.01, burst=50.0)
        assert await limiter.allow("k", limit)
        server.stop()
        with caplog.at_level(logging.WARNING, logger="hexdispatch.ratelimit"):
            assert all([await limiter.allow("k", limit) for _ in range(20)])  # this process's limits meanwhile
            assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
            server.start()  # the same port, empty
            await eventually(lambda: limiter.allow("k", limit), interval_s=0.2, what="Redis back")
            assert not limiter.failing
            assert sum("available again" in r.getMessage() for r in caplog.records) == 1
        assert await client.exists("test:k"), "limits are kept in Redis again"
    finally:
        await client.aclose()
        server.stop()


def test_local_broker_delivers_to_the_subscribed_channel_only():
    broker, seen = LocalBroker(), []
    broker.subscribe("order:1", seen.append)
    broker.publish("order:1", {"n": 1})
    broker.publish("order:2", {"n": 2})
    broker.unsubscribe("order:1")
    broker.publish("order:1", {"n": 3})
    assert seen == [{"n": 1}]


async def subscribers(client, prefix: str, expected: dict[str, int]) -> bool:
    """Whether Redis counts ``expected[channel]`` subscribers on each (prefixed) channel."""
    counts = {(c.decode() if isinstance(c, bytes) else c): n
              for c, n in await client.pubsub_numsub(*(prefix + channel for channel in expected))}
    return all(counts.get(prefix + channel) == n for channel, n in expected.items())


async def test_redis_broker_carries_messages_between_processes(redis_clients):
    prefix = f"test-{uuid.uuid4().hex}:"
    here, there = (RedisBroker(client, prefix) for client in redis_clients)
    await here.start()
    await there.start()
    try:
        received, sessions, own = [], [], []
        there.subscribe("order:7", received.append)
        there.subscribe("sessions", sessions.append)
        here.subscribe("order:7", own.append)
        await eventually(lambda: subscribers(redis_clients[0], prefix, {"order:7": 2, "sessions": 1}))
        for n in range(50):
            here.publish("order:7", {"n": n})
        assert [m["n"] for m in own] == list(range(50)), "the publisher's own handler gets them at once"
        here.publish("order:8", {"n": "not followed"})
        here.publish("sessions", {"driver_id": "d1"})
        await eventually(lambda: len(received) == 50 and sessions)
        assert [m["n"] for m in received] == list(range(50)), "in order, none lost"
        assert here.stats["round_trips"] < 50, "publishes are pipelined"
        # Redis sends a subscriber messages in the order it took them: once a message published after
        # the 50 has reached ``here``, Redis's echo of those 50 has reached it too.
        there.publish("order:7", {"n": "after"})
        await eventually(lambda: len(own) == 51)
        assert own[-1] == {"n": "after"} and here.stats["received"] == 1, "Redis's echo of its own messages is dropped"
        there.unsubscribe("order:7")
        await eventually(lambda: subscribers(redis_clients[0], prefix, {"order:7": 1}))
        here.publish("order:7", {"n": "late"})
        here.publish("sessions", {"driver_id": "d2"})  # taken by Redis after "late"
        await eventually(lambda: len(sessions) == 2)
        assert [m["n"] for m in received] == [*range(50), "after"], "nothing after unsubscribing"
    finally:
        await here.stop()
        await there.stop()


@pytest.fixture
async def redis_client():
    """The server's own Redis client (``server.app.open_redis``) with a pool of ``SMALL_POOL`` connections."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("needs REDIS_URL")
    client = open_redis(url, SMALL_POOL, DEADLINE_S)
    yield client
    await client.aclose()


async def test_a_burst_beyond_the_redis_pool_waits_for_connections_instead_of_failing(redis_client, caplog):
    """A reconnect storm: 300 rate-limit checks at once on a pool of 4 connections. Each waits for a connection
    (none fails with "Too many connections" and falls back), and the pool never grows past its bound."""
    limiter = RedisRateLimiter(redis_client, f"test-{uuid.uuid4().hex}:")
    limit = Limit(rate=1.0, burst=1.0)
    with caplog.at_level(logging.WARNING, logger="hexdispatch.ratelimit"):
        first = await asyncio.gather(*(limiter.allow(f"socket-{i}", limit) for i in range(300)))
        again = await asyncio.gather(*(limiter.allow(f"socket-{i}", limit) for i in range(300)))
    assert first == [True] * 300  # each key's first action, decided by Redis
    assert again == [False] * 300  # and its budget is spent in Redis, not in a local fallback
    assert not limiter.failing and "unavailable" not in caplog.text
    pool = redis_client.connection_pool
    assert len(pool._available_connections) + len(pool._in_use_connections) <= SMALL_POOL
