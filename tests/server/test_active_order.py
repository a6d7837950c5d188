"""``store.orders.ACTIVE_ORDER``, the one SQL spelling of "an order still in play", against the lifecycle."""

from __future__ import annotations

import itertools
from pathlib import Path

import asyncpg

from dispatch.lifecycle import Courier, Kitchen, OrderState
from store.orders import ACTIVE_ORDER

MIGRATION = Path(__file__).resolve().parents[2] / "server" / "migrations" / "versions" / "0001_initial.py"


async def test_the_predicate_holds_exactly_for_orders_not_terminal(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        for kitchen, courier, cancelled in itertools.product(Kitchen, Courier, (False, True)):
            state = OrderState(kitchen, courier, cancelled)
            active = await conn.fetchval(
                f"SELECT {ACTIVE_ORDER} FROM (SELECT $1::boolean AS cancelled, $2::text AS courier_status) o",
                cancelled, courier.value)
            assert active is (not state.terminal), state
    finally:
        await conn.close()


def test_the_predicate_is_spelled_as_the_partial_index_of_active_orders():
    """Postgres uses the partial index ``orders_active`` only for queries that imply its predicate."""
    index = MIGRATION.read_text().split("CREATE INDEX orders_active", 1)[1].split(";", 1)[0]
    assert ACTIVE_ORDER.replace("o.", "") in " ".join(index.split())
