"""Restaurants and menus: onboarding, updates, nearby search, menu with current status."""

from __future__ import annotations

import asyncpg

from dispatch.cells import cell_of, cover_ranges
from store.orders import ACTIVE_ORDER

#: Every stored field of a restaurant (what the in-memory replica keeps).
RESTAURANT_FIELDS = """
    r.id, r.owner_sub, r.name, r.cuisine_tags, r.address, r.latitude, r.longitude, r.h3_cell,
    r.prep_minutes, r.opening_hours, r.timezone, r.is_open, r.delivery_radius_m,
    r.delivery_fee_cents, r.created_at, r.updated_at
"""
#: The stored fields plus whether it is open right now.
RESTAURANT_COLUMNS = f"""{RESTAURANT_FIELDS},
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


async def restaurants_by_id(conn, restaurant_ids: list[int]) -> list[asyncpg.Record]:
    """The stored fields (:data:`RESTAURANT_FIELDS`) of those of ``restaurant_ids`` that exist."""
    return await conn.fetch(f"SELECT {RESTAURANT_FIELDS} FROM restaurants r WHERE r.id = ANY($1::bigint[])",
                            restaurant_ids)


#: Every restaurant's stored fields, for a server-side cursor (the replica's full load).
ALL_RESTAURANTS_SQL = f"SELECT {RESTAURANT_FIELDS} FROM restaurants r"


async def restaurant_owner(conn, restaurant_id: int) -> str | None:
    return await conn.fetchval("SELECT owner_sub FROM restaurants WHERE id = $1", restaurant_id)


#: Radii (metres) tried before the requested one: a dense downtown fills a page
#: within a few hundred metres, and then there is no need to look further.
NEARBY_STEPS_M = (250.0, 1000.0)


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

    ``after`` is the (distance, id) of the last row of the previous page. The
    search widens step by step and stops at the first radius that already
    holds ``limit`` rows: those are then exactly the nearest ``limit``.
    """
    pattern = None
    if name_contains is not None:
        escaped = name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
    after_distance, after_id = after if after is not None else (None, None)
    floor = after_distance or 0.0
    radii = [r for r in NEARBY_STEPS_M if floor < r < radius_m] + [float(radius_m)]
    for search_radius in radii:
        lows, highs = cover_ranges(lat, lng, search_radius)
        rows = await conn.fetch(
            NEARBY_SQL, lat, lng, lows, highs, search_radius, cuisine, pattern, open_now, after_distance, after_id,
            limit,
        )
        if len(rows) >= limit:
            break
    return rows


# One index range scan per cover range (the LATERAL subquery with OFFSET 0 keeps
# the planner from flattening it into a scan of the whole table).
NEARBY_SQL = f"""
    SELECT {RESTAURANT_COLUMNS}, {DISTANCE_SQL} AS distance_m
    FROM unnest($3::bigint[], $4::bigint[]) AS cover(lo, hi)
    CROSS JOIN LATERAL (
        SELECT * FROM restaurants r0 WHERE r0.h3_cell BETWEEN cover.lo AND cover.hi OFFSET 0
    ) AS r
    WHERE {DISTANCE_SQL} <= least($5, r.delivery_radius_m)
      AND ($6::text IS NULL OR $6 = ANY (r.cuisine_tags))
      AND ($7::text IS NULL OR r.name ILIKE $7)
      AND (NOT $8 OR restaurant_open_at(r.is_open, r.opening_hours, r.timezone, now()))
      AND ($9::float8 IS NULL OR ({DISTANCE_SQL}, r.id) > ($9, $10::bigint))
    ORDER BY distance_m, r.id
    LIMIT $11
"""


async def menu(conn, restaurant_id: int) -> tuple[asyncpg.Record | None, list[asyncpg.Record], int]:
    """The restaurant (:data:`RESTAURANT_FIELDS`), its items in menu order, and its count of active orders.

    One round trip: the items come back as one array of ``menu_items`` rows
    (binary, no JSON on either side). Open now is left to the caller
    (``server.catalog_replica.OpenClock``), which costs Postgres more than the rest.
    """
    row = await conn.fetchrow(
        f"""SELECT {RESTAURANT_FIELDS},
                (SELECT count(*) FROM orders o
                 WHERE o.restaurant_id = r.id AND {ACTIVE_ORDER}) AS active_orders,
                (SELECT array_agg(m ORDER BY m.id) FROM menu_items m WHERE m.restaurant_id = r.id) AS items
            FROM restaurants r WHERE r.id = $1""",
        restaurant_id,
    )
    if row is None:
        return None, [], 0
    return row, row["items"] or [], row["active_orders"]


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


async def erase_restaurant(conn, restaurant_id: int) -> tuple[bool, int]:
    """Delete a restaurant, its menu, and its orders with their audit trails, in one transaction, unless one of
    its orders is still active. Returns ``(erased, active orders)``: ``(False, 0)`` when there is no such
    restaurant, ``(False, n)`` when ``n`` orders are still being cooked or delivered (nothing is deleted)."""
    async with conn.transaction():
        found = await conn.fetchrow(
            f"""SELECT count(o.id) FILTER (WHERE {ACTIVE_ORDER}) AS active
                FROM restaurants r LEFT JOIN orders o ON o.restaurant_id = r.id
                WHERE r.id = $1 GROUP BY r.id""",
            restaurant_id)
        if found is None:
            return False, 0
        if found["active"]:
            return False, found["active"]
        await conn.execute("SET LOCAL hexdispatch.erasing_orders = 'on'")  # migration 0005
        await conn.execute(
            "DELETE FROM order_events WHERE order_id IN (SELECT id FROM orders WHERE restaurant_id = $1)", restaurant_id)
        await conn.execute("DELETE FROM orders WHERE restaurant_id = $1", restaurant_id)
        await conn.execute("DELETE FROM restaurants WHERE id = $1", restaurant_id)  # menu items cascade
    return True, 0
