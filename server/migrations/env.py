"""Alembic environment: migrations are plain SQL, run over asyncpg under an advisory lock.

Several server processes may start at once; the transaction-scoped advisory
lock makes exactly one of them apply pending migrations while the others wait
and then find nothing left to do.
"""

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

MIGRATION_LOCK_KEY = 0x6865786469737061  # "hexdispa"


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _main(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_main(context.config.attributes["sqlalchemy_url"]))
