"""How database rows are shown to clients."""

from __future__ import annotations

import asyncpg


def restaurant_view(row: asyncpg.Record, *, open_now: bool | None = None, with_owner: bool = False) -> dict:
    """A restaurant as clients see it; ``open_now`` overrides the row's (rows without one need it).

    The owner's account id is shown only ``with_owner`` (to the owner and admins): customers, drivers
    and other restaurants see the restaurant, not who runs it.
    """
    view = {
        "id": row["id"],
        "name": row["name"],
        "cuisine_tags": list(row["cuisine_tags"]),
        "address": row["address"],
        "location": {"lat": row["latitude"], "lng": row["longitude"]},
        "h3_cell": format(row["h3_cell"], "x"),
        "prep_minutes": row["prep_minutes"],
        "opening_hours": row["opening_hours"],
        "timezone": row["timezone"],
        "is_open": row["is_open"],
        "open_now": row["open_now"] if open_now is None else open_now,
        "delivery_radius_m": row["delivery_radius_m"],
        "delivery_fee_cents": row["delivery_fee_cents"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
    if with_owner:
        view["owner"] = row["owner_sub"]
    if "distance_m" in row.keys():
        view["distance_m"] = round(row["distance_m"], 1)
    return view


def item_view(row: asyncpg.Record) -> dict:
    return {
        "id": row["id"],
        "restaurant_id": row["restaurant_id"],
        "name": row["name"],
        "description": row["description"],
        "price_cents": row["price_cents"],
        "available": row["available"],
        "updated_at": row["updated_at"],
    }


def order_view(row: asyncpg.Record) -> dict:
    return {
        "id": row["id"],
        "customer_id": row["customer_id"],
        "restaurant_id": row["restaurant_id"],
        "items": row["items"],
        "subtotal_cents": row["subtotal_cents"],
        "delivery_fee_cents": row["delivery_fee_cents"],
        "total_cents": row["total_cents"],
        "dropoff": {"lat": row["dropoff_lat"], "lng": row["dropoff_lng"], "address": row["dropoff_address"]},
        "notes": row["notes"],
        "status": row["status"],
        "kitchen_status": row["kitchen_status"],
        "courier_status": row["courier_status"],
        "driver_id": row["driver_id"],
        "version": row["version"],
        "placed_at": row["placed_at"],
        "ready_estimate_at": row["ready_estimate_at"],
        "ready_at": row["ready_at"],
        "assigned_at": row["assigned_at"],
        "picked_up_at": row["picked_up_at"],
        "delivered_at": row["delivered_at"],
        "cancelled_at": row["cancelled_at"],
    }


def event_view(row: asyncpg.Record) -> dict:
    return {
        "order_id": row["order_id"],
        "seq": row["seq"],
        "event": row["type"],
        "status": row["status"],
        "kitchen_status": row["kitchen_status"],
        "courier_status": row["courier_status"],
        "payload": row["payload"],
        "actor": row["actor"],
        "at": row["at"].timestamp(),
    }
