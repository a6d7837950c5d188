"""Builders for catalog data used across the server tests."""

from __future__ import annotations

import uuid

CHICAGO = (41.8781, -87.6298)


def restaurant_body(**overrides) -> dict:
    body = {
        "name": f"Trattoria {uuid.uuid4().hex[:6]}",
        "address": "1 Main St",
        "latitude": CHICAGO[0],
        "longitude": CHICAGO[1],
        "cuisine_tags": ["italian"],
        "prep_minutes": 12,
    }
    body.update(overrides)
    return body


async def make_restaurant(api, **overrides) -> dict:
    r = await api.post("/v1/restaurants", json=restaurant_body(**overrides))
    assert r.status_code == 201, r.text
    return r.json()


async def add_item(api, restaurant_id: int, name: str = "Margherita", price_cents: int = 1250, **extra) -> dict:
    r = await api.post(
        f"/v1/restaurants/{restaurant_id}/menu/items", json={"name": name, "price_cents": price_cents, **extra}
    )
    assert r.status_code == 201, r.text
    return r.json()


async def place(api, restaurant_id: int, items: list[dict], key: str | None = None, dropoff=None, **extra):
    lat, lng = dropoff or (CHICAGO[0] + 0.005, CHICAGO[1] + 0.005)
    return await api.post(
        "/v1/orders",
        json={"restaurant_id": restaurant_id, "items": items, "dropoff": {"lat": lat, "lng": lng}, **extra},
        headers={"Idempotency-Key": key or uuid.uuid4().hex},
    )
