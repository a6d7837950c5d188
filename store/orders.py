"""Orders: idempotent placement, reads scoped to the caller, and lifecycle events.

Every change of an order goes through :func:`apply_event`: the lifecycle
table (``dispatch.lifecycle``) decides, the row is updated under its version,
and the audit event is appended in the same transaction.
"""

from __future__ import annotations

import asyncpg

from dispatch import lifecycle
from dispatch.geo import haversine_m
from dispatch.lifecycle import Actor, Event, IllegalTransition
from store.errors import Conflict, Invalid, NotFound
from store.principal import Principal, Role

ORDER_COLUMNS = """
    o.id, o.customer_id, o.restaurant_id, o.items, o.subtotal_cents, o.delivery_fee_cents,
    o.total_cents, o.dropoff_lat, o.dropoff_lng, o.dropoff_address, o.notes, o.status,
    o.kitchen_status, o.courier_status, o.cancelled, o.driver_id, o.version, o.placed_at,
    o.ready_estimate_at, o.ready_at, o.assigned_at, o.picked_up_at, o.delivered_at,
    o.cancelled_at, o.updated_at, o.job_id, o.promise, o.eta
"""

#: The one SQL predicate of an order still in play (not :attr:`dispatch.lifecycle.OrderState.terminal`: neither
#: cancelled nor delivered), over ``orders`` aliased ``o``. Spelled as the partial index ``orders_active`` of
#: migration 0001 spells it, so the planner can use that index.
ACTIVE_ORDER = f"NOT o.cancelled AND o.courier_status <> '{lifecycle.FINISHING_COURIER.value}'"

EVENT_COLUMNS = "id, order_id, seq, type, status, kitchen_status, courier_status, payload, actor, at, eta"
#: The audit trail's insert, before its VALUES or SELECT.
#: Every event carries the order's delivery estimate current when it was written (``orders.eta``).
INSERT_EVENT = ("INSERT INTO order_events (order_id, seq, type, status, kitchen_status, courier_status, payload, "
                "actor, eta)")

# Which timestamps (and other columns) each event stamps, as SQL assignments.
# $7, $8 are the event's arguments: (driver id, job id) for ASSIGN, (seconds until ready,) for REVISE_READY,
# (the estimate,) for ESTIMATE: the first one given is the order's promise.
EVENT_EFFECTS: dict[Event, str] = {
    Event.ACCEPT: "",
    Event.START_PREPARING: "",
    Event.MARK_READY: "ready_at = coalesce(ready_at, now())",
    Event.REVISE_READY: "ready_estimate_at = now() + make_interval(secs => $7::int)",
    Event.ASSIGN: "driver_id = $7::text, job_id = $8::text, assigned_at = now()",
    Event.ARRIVE: "",
    Event.PICK_UP: "ready_at = coalesce(ready_at, now()), picked_up_at = now()",
    Event.DELIVER: "delivered_at = now()",
    Event.UNASSIGN: "driver_id = NULL, job_id = NULL, assigned_at = NULL",
    Event.CANCEL: "cancelled_at = now()",
    Event.ESTIMATE: "eta = $7::jsonb, promise = coalesce(promise, $7::jsonb)",
}
assert set(EVENT_EFFECTS) == set(lifecycle.TRANSITIONS), "every lifecycle event needs its effects"

ROLE_ACTOR = {
    Role.CUSTOMER: Actor.CUSTOMER,
    Role.RESTAURANT: Actor.RESTAURANT,
    Role.DRIVER: Actor.DRIVER,
    Role.ADMIN: Actor.ADMIN,
}


def visibility(principal: Principal, first_param: int) -> tuple[str, list]:
    """A WHERE clause (over ``orders o``) limiting rows to those ``principal`` may see."""
    p = f"${first_param}"
    if principal.role is Role.CUSTOMER:
        return f"o.customer_id = {p}", [principal.sub]
    if principal.role is Role.DRIVER:
        return f"o.driver_id = {p}", [principal.sub]
    if principal.role is Role.RESTAURANT:
        return f"o.restaurant_id IN (SELECT id FROM restaurants WHERE owner_sub = {p})", [principal.sub]
    return "TRUE", []


async def _existing(conn, customer_id: str, key: str, request_hash: str) -> asyncpg.Record | None:
    row = await conn.fetchrow(
        f"SELECT {ORDER_COLUMNS}, o.request_hash FROM orders o WHERE customer_id = $1 AND idempotency_key = $2",
        customer_id, key,
    )
    if row is not None and row["request_hash"] != request_hash:
        raise Invalid("idempotency_key_reused", "this Idempotency-Key was already used for a different order")
    return row


async def place_order(pool, principal: Principal, key: str, request_hash: str, order) -> tuple[asyncpg.Record, bool]:
    """Place ``order`` (a validated ``OrderIn``) once per (customer, key).

    Returns the order and whether this call created it; a retry with the same
    key and body returns the first order, never a second one. A created
    order's row also carries its restaurant's ``restaurant_lat`` and
    ``restaurant_lng`` (what live dispatch needs: :func:`actors.cell.placed_order`).

    Four round trips to Postgres and no explicit transaction: three reads,
    then one statement that writes the customer, the order and its ``placed``
    event together or not at all (the order's unique key settles concurrent
    retries).
    """
    async with pool.acquire() as conn:
        existing = await _existing(conn, principal.sub, key, request_hash)
        if existing is not None:
            return existing, False
        restaurant = await conn.fetchrow(
            """SELECT id, latitude, longitude, prep_minutes, delivery_radius_m, delivery_fee_cents,
                      restaurant_open_at(is_open, opening_hours, timezone, now()) AS open_now
               FROM restaurants WHERE id = $1""",
            order.restaurant_id,
        )
        if restaurant is None:
            raise Invalid("unknown_restaurant", f"restaurant {order.restaurant_id} does not exist")
        if not restaurant["open_now"]:
            raise Conflict("restaurant_closed", "the restaurant is not taking orders now")
        distance = haversine_m(restaurant["latitude"], restaurant["longitude"], order.dropoff.lat, order.dropoff.lng)
        if distance > restaurant["delivery_radius_m"]:
            raise Invalid(
                "outside_delivery_area",
                f"the drop-off is {distance:.0f} m away; this restaurant delivers within "
                f"{restaurant['delivery_radius_m']} m",
            )
        lines = await _priced_lines(conn, order)
        subtotal = sum(line["line_total_cents"] for line in lines)
        fee = restaurant["delivery_fee_cents"]
        try:
            row = await _insert_order(conn, principal, key, request_hash, order, lines, subtotal, fee, restaurant)
        except asyncpg.ForeignKeyViolationError:  # its restaurant, or an item, was erased since it was read
            raise Invalid("unknown_restaurant", f"restaurant {order.restaurant_id} does not exist") from None
        if row is None:  # a concurrent retry with the same key committed first
            return await _existing(conn, principal.sub, key, request_hash), False
        return row, True


async def _insert_order(conn, principal: Principal, key: str, request_hash: str, order, lines, subtotal: int,
                        fee: int, restaurant) -> asyncpg.Record | None:
    """One statement: the customer, the order and its ``placed`` event, or nothing (None: the key was taken)."""
    return await conn.fetchrow(
        f"""WITH c AS (
                INSERT INTO customers (id) VALUES ($1) ON CONFLICT DO NOTHING
            ), o AS (
                INSERT INTO orders (customer_id, restaurant_id, idempotency_key, request_hash, items,
                    subtotal_cents, delivery_fee_cents, total_cents, dropoff_lat, dropoff_lng,
                    dropoff_address, notes, status, kitchen_status, courier_status, ready_estimate_at)
                VALUES ($1, $2, $3, $4, $5, $6::bigint, $7::int, $6::bigint + $7::int, $8, $9, $10, $11, 'placed', 'placed',
                    'unassigned', now() + make_interval(mins => $12::int))
                ON CONFLICT (customer_id, idempotency_key) DO NOTHING
                RETURNING *
            ), e AS (
                {INSERT_EVENT}
                SELECT id, version, 'placed', status, kitchen_status, courier_status,
                    jsonb_build_object('total_cents', total_cents), $15, eta FROM o
            )
            SELECT {ORDER_COLUMNS}, $13::float8 AS restaurant_lat, $14::float8 AS restaurant_lng FROM o""",
        principal.sub, order.restaurant_id, key, request_hash, lines, subtotal, fee,
        order.dropoff.lat, order.dropoff.lng, order.dropoff_address, order.notes, restaurant["prep_minutes"],
        restaurant["latitude"], restaurant["longitude"], principal.actor,
    )


async def _priced_lines(conn, order) -> list[dict]:
    """The order's lines priced from the database; refuses unknown, foreign or unavailable items."""
    wanted = sorted({line.item_id for line in order.items})
    rows = await conn.fetch(
        "SELECT id, restaurant_id, name, price_cents, available FROM menu_items WHERE id = ANY($1::bigint[])", wanted
    )
    by_id = {row["id"]: row for row in rows}
    lines = []
    for line in order.items:
        item = by_id.get(line.item_id)
        if item is None or item["restaurant_id"] != order.restaurant_id:
            raise Invalid(
                "unknown_item", f"item {line.item_id} is not on restaurant {order.restaurant_id}'s menu"
            )
        if not item["available"]:
            raise Conflict("item_unavailable", f"{item['name']} (item {item['id']}) is not available now")
        lines.append({
            "item_id": item["id"],
            "name": item["name"],
            "unit_price_cents": item["price_cents"],
            "quantity": line.quantity,
            "line_total_cents": item["price_cents"] * line.quantity,
        })
    return lines


async def _append_event(conn, row, event_type: str, payload: dict, actor: str) -> None:
    await conn.execute(
        f"{INSERT_EVENT} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        row["id"], row["version"], event_type, row["status"], row["kitchen_status"], row["courier_status"], payload,
        actor, row["eta"],
    )


async def get_order(conn, principal: Principal, order_id: int) -> asyncpg.Record | None:
    """The order if ``principal`` may see it (a stranger's order reads as missing)."""
    clause, params = visibility(principal, 2)
    return await conn.fetchrow(f"SELECT {ORDER_COLUMNS} FROM orders o WHERE o.id = $1 AND {clause}", order_id, *params)


async def list_orders(
    conn, principal: Principal, *, before_id: int | None, limit: int, restaurant_id: int | None = None,
    active_only: bool = False,
) -> list[asyncpg.Record]:
    """The orders ``principal`` may see, newest first, ``limit`` of them after ``before_id``."""
    clause, params = visibility(principal, 4)
    filters = [clause, "($3::bigint IS NULL OR o.restaurant_id = $3)"]
    if active_only:
        filters.append(ACTIVE_ORDER)
    return await conn.fetch(
        f"""SELECT {ORDER_COLUMNS} FROM orders o
            WHERE ($1::bigint IS NULL OR o.id < $1) AND {" AND ".join(filters)}
            ORDER BY o.id DESC LIMIT $2""",
        before_id, limit, restaurant_id, *params,
    )


async def list_events(conn, principal: Principal, order_id: int, after_seq: int) -> list[asyncpg.Record] | None:
    """The order's audit events after ``after_seq``; ``None`` if the order is not visible."""
    if await get_order(conn, principal, order_id) is None:
        return None
    return await conn.fetch(
        f"SELECT {EVENT_COLUMNS} FROM order_events WHERE order_id = $1 AND seq > $2 ORDER BY seq",
        order_id, after_seq,
    )


async def apply_event(pool, order_id: int, event: Event, **kwargs) -> asyncpg.Record:
    """:func:`apply_event_on` in a transaction of its own."""
    async with pool.acquire() as conn, conn.transaction():
        return await apply_event_on(conn, order_id, event, **kwargs)


async def apply_event_on(
    conn,
    order_id: int,
    event: Event,
    *,
    actor: Actor,
    actor_label: str,
    principal: Principal | None = None,
    arguments: tuple = (),
    payload: dict | None = None,
    expected_version: int | None = None,
    expected_driver: str | None = None,
) -> asyncpg.Record:
    """Apply a lifecycle event to an order, with its audit event, inside the caller's transaction.

    ``principal`` (when given) must be able to see the order, else :class:`NotFound`. An
    illegal transition is a :class:`Conflict` and changes nothing; so is a stale
    ``expected_version``, or an order not held by ``expected_driver``.
    ``arguments`` feed the event's effect (see ``EVENT_EFFECTS``).
    """
    if principal is not None:
        clause, params = visibility(principal, 2)
    else:
        clause, params = "TRUE", []
    row = await conn.fetchrow(
        f"SELECT {ORDER_COLUMNS} FROM orders o WHERE o.id = $1 AND {clause} FOR UPDATE", order_id, *params
    )
    if row is None:
        raise NotFound("order")
    if expected_version is not None and row["version"] != expected_version:
        raise Conflict("version_conflict", f"the order is at version {row['version']}, not {expected_version}")
    if expected_driver is not None and row["driver_id"] != expected_driver:
        raise Conflict("not_your_order", "the order is not assigned to this driver")
    state = lifecycle.state_from_row(row["kitchen_status"], row["courier_status"], row["cancelled"])
    try:
        new = lifecycle.apply(state, event, actor)
    except IllegalTransition as exc:
        raise Conflict("illegal_transition", str(exc)) from None
    effect = EVENT_EFFECTS[event]
    sets = [
        "kitchen_status = $3", "courier_status = $4", "cancelled = $5", "status = $6",
        "version = version + 1", "updated_at = now()",
    ] + ([effect] if effect else [])
    used = sum(f"${7 + i}" in effect for i in range(len(arguments)))
    updated = await conn.fetchrow(
        f"""WITH o AS (UPDATE orders SET {", ".join(sets)} WHERE id = $1 AND version = $2 RETURNING *)
            SELECT {ORDER_COLUMNS} FROM o""",
        order_id, row["version"], new.kitchen.value, new.courier.value, new.cancelled, new.status.value,
        *arguments[:used],
    )
    await _append_event(conn, updated, event.value, payload or {}, actor_label)
    return updated
