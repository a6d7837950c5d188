"""Restaurants and menus: onboarding, updates, nearby search, menu with current status."""

from __future__ import annotations

import asyncpg

from dispatch.cells import cell_of, cover_ranges

RESTAURANT_COLUMNS = """
    r.id, r.owner_sub, r.name, r.cuisine_tags, r.address, r.latitude, r.longitude, r.h3_cell,
    r.prep_minutes, r.opening_hours, r.timezone, r.is_open, r.delivery_radius_m,
    r.delivery_fee_cents, r.created_at, r.updated_at,
    restaurant_open_at(r.is_open, r.opening_hours, r.timezone, now()) AS open_now
"""

ITEM_COLUMNS = "id, restaurant_id, name, description, price_cents, available, created_at, updated_at"

# Columns a PATCH may set; the request schema has already validated the values.
RESTAURANT_MUTABLE = (
    "name", "address", "latitude", "longitude", "cuisine_tags", "prep_minutes", "opening_hours",
    "timezone", "is_open", "delivery_radius_m", "delivery_fee_cents",
)
ITEM_MUTABLE = ("name", "description", "price_cents", "available")

# Great-circle distance in metres from ($1, $2) to the row; the same formula as dispatch.geo.
DISTANCE_SQL = """
    2 * 6371008.8 * asin(least(1.0, sqrt(
        power(sin(radians(r.latitude - $1) / 2), 2)
        + cos(radians($1)) * cos(radians(r.latitude)) * power(sin(radians(r.longitude - $2) / 2), 2))))
"""


async def create_restaurant(conn: asyncpg.Connection, owner_sub: str, fields: dict) -> asyncpg.Record:
    """Insert a restaurant; its H3 cell is derived from its coordinates."""
    fields = {**fields, "owner_sub": owner_sub, "h3_cell": cell_of(fields["latitude"], fields["longitude"])}
    columns = list(fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return await conn.fetchrow(
        f"""WITH r AS (INSERT INTO restaurants ({", ".join(columns)}) VALUES ({placeholders}) RETURNING *)
            SELECT {RESTAURANT_COLUMNS} FROM r""",
        *fields.values(),
    )


async def get_restaurant(conn, restaurant_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {RESTAURANT_COLUMNS} FROM restaurants r WHERE r.id = $1", restaurant_id)


async def update_restaurant(conn, restaurant_id: int, changes: dict) -> asyncpg.Record | None:
    """Apply ``changes`` (keys from RESTAURANT_MUTABLE); recomputes the H3 cell when moved."""
    changes = {k: v for k, v in changes.items() if k in RESTAURANT_MUTABLE}
    if "latitude" in changes or "longitude" in changes:
        current = await conn.fetchrow("SELECT latitude, longitude FROM restaurants WHERE id = $1", restaurant_id)
        if current is None:
            return None
        lat = changes.get("latitude", current["latitude"])
        lng = changes.get("longitude", current["longitude"])
        changes["h3_cell"] = cell_of(lat, lng)
    assignments = [f"{col} = ${i}" for i, col in enumerate(changes, start=2)]
    assignments.append("updated_at = now()")
    return await conn.fetchrow(
        f"""WITH r AS (UPDATE restaurants SET {", ".join(assignments)} WHERE id = $1 RETURNING *)
            SELECT {RESTAURANT_COLUMNS} FROM r""",
        restaurant_id,
        *changes.values(),
    )


async def restaurant_owner(conn, restaurant_id: int) -> str | None:
    return await conn.fetchval("SELECT owner_sub FROM restaurants WHERE id = $1", restaurant_id)


async def nearby(
    conn,
    *,
    lat: float,
    lng: float,
    radius_m: float,
    cuisine: str | None,
    name_contains: str | None,
    open_now: bool,
    after: tuple[float, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Restaurants that deliver to (lat, lng) within ``radius_m``, nearest first, then by id.

    ``after`` is the (distance, id) of the last row of the previous page.
    """
    lows, highs = cover_ranges(lat, lng, radius_m)
    pattern = None
    if name_contains is not None:
        escaped = name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
    after_distance, after_id = after if after is not None else (None, None)
    return await conn.fetch(
        f"""
        SELECT {RESTAURANT_COLUMNS}, {DISTANCE_SQL} AS distance_m
        FROM unnest($3::bigint[], $4::bigint[]) AS cover(lo, hi)
        JOIN restaurants r ON r.h3_cell BETWEEN cover.lo AND cover.hi
        WHERE {DISTANCE_SQL} <= least($5, r.delivery_radius_m)
          AND ($6::text IS NULL OR $6 = ANY (r.cuisine_tags))
          AND ($7::text IS NULL OR r.name ILIKE $7)
          AND (NOT $8 OR restaurant_open_at(r.is_open, r.opening_hours, r.timezone, now()))
          AND ($9::float8 IS NULL OR ({DISTANCE_SQL}, r.id) > ($9, $10::bigint))
        ORDER BY distance_m, r.id
        LIMIT $11
        """,
        lat, lng, lows, highs, float(radius_m), cuisine, pattern, open_now, after_distance, after_id, limit,
    )


async def menu(conn, restaurant_id: int) -> tuple[asyncpg.Record | None, list[asyncpg.Record], int]:
    """The restaurant (with open_now), its items in menu order, and its count of active orders."""
    restaurant = await get_restaurant(conn, restaurant_id)
    if restaurant is None:
        return None, [], 0
    items = await conn.fetch(
        f"SELECT {ITEM_COLUMNS} FROM menu_items WHERE restaurant_id = $1 ORDER BY id", restaurant_id
    )
    active = await conn.fetchval(
        "SELECT count(*) FROM orders WHERE restaurant_id = $1 AND NOT cancelled AND courier_status <> 'delivered'",
        restaurant_id,
    )
    return restaurant, items, active


async def create_item(conn, restaurant_id: int, fields: dict) -> asyncpg.Record:
    return await conn.fetchrow(
        f"""INSERT INTO menu_items (restaurant_id, name, description, price_cents, available)
            VALUES ($1, $2, $3, $4, $5) RETURNING {ITEM_COLUMNS}""",
        restaurant_id, fields["name"], fields["description"], fields["price_cents"], fields["available"],
    )


async def update_item(conn, restaurant_id: int, item_id: int, changes: dict) -> asyncpg.Record | None:
    changes = {k: v for k, v in changes.items() if k in ITEM_MUTABLE}
    assignments = [f"{col} = ${i}" for i, col in enumerate(changes, start=3)] + ["updated_at = now()"]
    return await conn.fetchrow(
        f"""UPDATE menu_items SET {", ".join(assignments)}
            WHERE restaurant_id = $1 AND id = $2 RETURNING {ITEM_COLUMNS}""",
        restaurant_id, item_id, *changes.values(),
    )


async def delete_item(conn, restaurant_id: int, item_id: int) -> bool:
    """Remove an item from the menu (past orders keep their snapshot)."""
    status = await conn.execute("DELETE FROM menu_items WHERE restaurant_id = $1 AND id = $2", restaurant_id, item_id)
    return status.endswith(" 1")
