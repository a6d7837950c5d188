"""How database rows are shown to clients."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field


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
        "promise": row["promise"],
        "eta": row["eta"],
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
        "eta": row["eta"],
    }


# What the views above return, as pydantic models: the OpenAPI document's response schemas
# (``server/openapi.py``); the API tests validate real responses against them.


class View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatLngView(View):
    lat: float
    lng: float


class RestaurantView(View):
    id: int
    name: str
    cuisine_tags: list[str]
    address: str
    location: LatLngView
    h3_cell: str
    prep_minutes: int
    opening_hours: dict[str, list[list[str]]] | None
    timezone: str
    is_open: bool
    open_now: bool
    delivery_radius_m: int
    delivery_fee_cents: int
    created_at: datetime
    updated_at: datetime
    owner: str | None = None
    distance_m: float | None = None


class DeliveryEtaView(View):
    """How long an order placed now would take to reach the searcher's point, in minutes from now: a p10-p90
    range and a point, from the live state of the restaurant's cell (its couriers and their work)."""

    minutes_low: int = Field(description="p10, rounded down")
    minutes: int = Field(description="the point estimate, rounded")
    minutes_high: int = Field(description="p90, rounded up")
    as_of: float = Field(description="unix seconds when the couriers' state it is computed from was read")


class NearbyRestaurantView(RestaurantView):
    delivery_eta: DeliveryEtaView | None = Field(
        description="null when no courier data is known for the restaurant's cell or its neighbours")


class RestaurantPage(View):
    items: list[NearbyRestaurantView]
    next_cursor: str | None


class MenuItemView(View):
    id: int
    restaurant_id: int
    name: str
    description: str
    price_cents: int
    available: bool
    updated_at: datetime


class MenuStatus(View):
    open_now: bool
    prep_minutes: int
    active_orders: int


class MenuView(View):
    restaurant: RestaurantView
    status: MenuStatus
    items: list[MenuItemView]


class Deleted(View):
    deleted: int


class OrderLineView(View):
    item_id: int
    name: str
    unit_price_cents: int
    quantity: int
    line_total_cents: int


class DropoffView(View):
    lat: float
    lng: float
    address: str


class EstimateView(View):
    """A delivery estimate (``dispatch.eta.Estimate``); times in unix seconds."""

    given_at: float
    basis: Literal["queue", "job", "on_board"] = Field(
        description="queue: no courier yet (a forecast of the cell's queue); job: the assigned courier's plan; "
                    "on_board: the food is picked up")
    dropoff_at: float = Field(description="expected arrival at the customer's door")
    dropoff_early: float = Field(description="the range's early end (p10)")
    dropoff_late: float = Field(description="the range's late end (p90)")
    pickup_at: float | None = Field(description="expected pickup (null once picked up)")
    courier_arrival_at: float | None = Field(
        description="the courier's expected arrival at the restaurant (null: no courier can be foreseen, or picked up)")


class OrderView(View):
    id: int
    customer_id: str
    restaurant_id: int
    items: list[OrderLineView]
    subtotal_cents: int
    delivery_fee_cents: int
    total_cents: int
    dropoff: DropoffView
    notes: str
    status: str
    kitchen_status: str
    courier_status: str
    driver_id: str | None
    version: int
    placed_at: datetime
    ready_estimate_at: datetime | None
    ready_at: datetime | None
    assigned_at: datetime | None
    picked_up_at: datetime | None
    delivered_at: datetime | None
    cancelled_at: datetime | None
    promise: EstimateView | None = Field(description="the delivery estimate given at placement, as it was given "
                                         "(null: none could be given yet)")
    eta: EstimateView | None = Field(description="the latest delivery estimate given")


class OrderPage(View):
    items: list[OrderView]
    next_cursor: str | None


class EventView(View):
    order_id: int
    seq: int
    event: str
    status: str
    kitchen_status: str | None = Field(description="the kitchen track after the event (null for events recorded "
                                       "before migration 0006)")
    courier_status: str | None = Field(description="the courier track after the event (null for events recorded "
                                       "before migration 0006)")
    payload: dict
    actor: str
    at: float = Field(description="unix seconds")
    eta: EstimateView | None = Field(description="the order's delivery estimate when the event was written "
                                     "(for an `estimate` event, the new one)")


class EventList(View):
    items: list[EventView]


class DriverView(View):
    id: str
    vehicle: str
    capacity: int
    rating: float | None
    updated_at: datetime


class Health(View):
    status: str


class AdminCells(View):
    """Every live cell's load report (``CellActor.load``), the cells that did not answer, and Ray's nodes."""

    cells: list[dict]
    unanswered: list[str]
    nodes: list[dict]


class AdminStats(View):
    """This process's gateway counters and health figures (keys grow with the server)."""

    model_config = ConfigDict(extra="allow")
    gateway: str
    pid: int
    at: float
