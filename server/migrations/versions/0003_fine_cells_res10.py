"""Restaurants' fine H3 cell at resolution 10 instead of 9 (tighter nearby-search covers).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import h3.api.basic_int as h3

from server.db import run_on_connection

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


async def _recompute(conn, res: int) -> None:
    rows = await conn.fetch("SELECT id, latitude, longitude FROM restaurants")
    await conn.executemany(
        "UPDATE restaurants SET h3_cell = $2 WHERE id = $1",
        [(r["id"], h3.latlng_to_cell(r["latitude"], r["longitude"], res)) for r in rows],
    )
    await conn.execute("COMMENT ON COLUMN restaurants.h3_cell IS 'H3 cell of (latitude, longitude) at resolution %s'"
                       % res)


def upgrade() -> None:
    run_on_connection(lambda conn: _recompute(conn, 10))


def downgrade() -> None:
    run_on_connection(lambda conn: _recompute(conn, 9))
