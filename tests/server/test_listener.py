"""The resilient LISTEN (``server.listener``) against a private Postgres that the tests stop and restart."""

from __future__ import annotations

import asyncio

import asyncpg

from server.listener import ResilientListener
from tests.private_postgres import eventually, private_postgres  # noqa: F401 - the fixture

CHANNEL = "listener_test"


async def notify(dsn: str, payload: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
    finally:
        await conn.close()


async def test_reconnects_with_capped_backoff_then_resyncs_and_hears_again(private_postgres):
    heard: list[str] = []
    resyncs: list[int] = []
    losses: list[int] = []

    async def on_connect(conn):
        resyncs.append(conn.get_server_pid())

    listener = ResilientListener(private_postgres.dsn, {CHANNEL: lambda c, pid, ch, payload: heard.append(payload)},
                                 on_connect=on_connect, on_disconnect=lambda: losses.append(1),
                                 initial_backoff_s=0.05, max_backoff_s=0.4, keepalive_s=1.0, connect_timeout_s=5.0)
    listener.start()
    try:
        assert await listener.wait_connected(30)
        await notify(private_postgres.dsn, "before")
        await eventually(lambda: heard == ["before"], what="first notification")

        await asyncio.to_thread(private_postgres.stop)
        await eventually(lambda: not listener.connected and losses == [1], what="loss noticed")
        await eventually(lambda: listener.failed_attempts >= 6, what="reconnection attempts")
        delays = list(listener.recent_delays)
        assert all(0 < d <= 0.4 for d in delays), delays
        assert delays[0] < 0.15 and max(delays) == 0.4, delays  # grows from the first wait to the cap
        assert listener.connects == 1 and len(resyncs) == 1

        await asyncio.to_thread(private_postgres.start)
        await eventually(lambda: listener.connected and len(resyncs) == 2, what="reconnected and resynchronised")
        assert listener.connects == 2
        await notify(private_postgres.dsn, "after")
        await eventually(lambda: heard == ["before", "after"], what="notification after reconnecting")
    finally:
        await listener.stop()
    assert not listener.connected


async def test_a_terminated_backend_is_replaced_and_a_failed_resync_retried(private_postgres):
    attempts: list[int] = []

    async def on_connect(conn):
        attempts.append(conn.get_server_pid())
        if len(attempts) == 2:
            raise asyncpg.PostgresError("resynchronisation failed")

    listener = ResilientListener(private_postgres.dsn, {CHANNEL: lambda *args: None}, on_connect=on_connect,
                                 initial_backoff_s=0.05, max_backoff_s=0.2)
    listener.start()
    try:
        assert await listener.wait_connected(30)
        first = listener.connection.get_server_pid()
        admin = await asyncpg.connect(private_postgres.dsn)
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        # The second connection's resynchronisation fails: it is dropped and a third one made.
        await eventually(lambda: listener.connected and len(attempts) == 3, what="replaced after a failed resync")
        assert listener.connects == 2 and listener.failed_attempts == 1
        assert listener.connection.get_server_pid() not in (first, attempts[1])
    finally:
        await listener.stop()
