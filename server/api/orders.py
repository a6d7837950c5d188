"""Placing, reading and moving orders through their lifecycle over HTTP."""

from __future__ import annotations

import hashlib

import orjson
from starlette.requests import Request
from starlette.routing import Route

from actors.cell import placed_order
from dispatch.cell import CELL_NOTICES
from dispatch.lifecycle import Event
from server.api.common import body, caller, decode_cursor, encode_cursor, page, path_id, query
from server.api.views import event_view, order_view
from server.auth import Role
from server.errors import ApiError, not_found
from server.responses import JSONResponse
from server.schemas import ID_CURSOR, CancelIn, EventsQuery, OrderIn, PageQuery, ReadyRevision
from store import orders

MAX_IDEMPOTENCY_KEY = 200


def request_fingerprint(order: OrderIn) -> str:
    """A stable hash of a validated order body (to spot an Idempotency-Key reused for another order)."""
    return hashlib.sha256(orjson.dumps(order.model_dump(), option=orjson.OPT_SORT_KEYS)).hexdigest()


async def place_order(request: Request) -> JSONResponse:
    principal = caller(request, Role.CUSTOMER)
    limit = request.app.state.settings.rate_limits.order_placement
    if not await request.app.state.rate_limiter.allow(f"order-placement:{principal.sub}", limit):
        raise ApiError(429, "rate_limited", f"at most {limit.rate:g} orders per second (bursts of {limit.burst:g}); retry later")
    key = request.headers.get("idempotency-key", "").strip()
    if not key:
        raise ApiError(400, "idempotency_key_required", "POST /v1/orders needs an Idempotency-Key header")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(400, "idempotency_key_too_long", f"Idempotency-Key is limited to {MAX_IDEMPOTENCY_KEY} characters")
    if "\x00" in key:
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key may not contain the character U+0000")
    order = await body(request, OrderIn)
    gateway = request.app.state.gateway
    if gateway is not None:
        await gateway.admit_order(order.restaurant_id)  # refused outside the service area or past the cell cap
    row, created = await orders.place_order(
        request.app.state.pool, principal, key, request_fingerprint(order), order
    )
    view = order_view(row)
    if created and gateway is not None:
        promise = await gateway.order_placed(placed_order(row))
        if promise is not None:
            view["promise"] = view["eta"] = promise
    return JSONResponse(view, status_code=201 if created else 200)


async def get_order(request: Request) -> JSONResponse:
    principal = caller(request)
    order_id = path_id(request, "order_id", "order")
    async with request.app.state.pool.acquire() as conn:
        row = await orders.get_order(conn, principal, order_id)
    if row is None:
        raise not_found("order")
    return JSONResponse(order_view(row))


async def list_orders(request: Request) -> JSONResponse:
    principal = caller(request)
    params = query(request, PageQuery)
    before = decode_cursor(params.cursor, ID_CURSOR)[0] if params.cursor else None
    async with request.app.state.pool.acquire() as conn:
        rows = await orders.list_orders(conn, principal, before_id=before, limit=params.limit + 1)
    return JSONResponse(page([order_view(r) for r in rows], params.limit, lambda v: encode_cursor(v["id"])))


async def order_events(request: Request) -> JSONResponse:
    principal = caller(request)
    order_id = path_id(request, "order_id", "order")
    params = query(request, EventsQuery)
    async with request.app.state.pool.acquire() as conn:
        rows = await orders.list_events(conn, principal, order_id, params.after)
    if rows is None:
        raise not_found("order")
    return JSONResponse({"items": [event_view(r) for r in rows]})


def notify(request: Request, order_id: int, change: str) -> None:
    """Tell live dispatch (when this server runs it) that an order changed."""
    gateway = request.app.state.gateway
    if gateway is not None:
        gateway.notify_order(order_id, change)


async def _apply(request: Request, event: Event, roles: tuple[Role, ...], read_change=None):
    """Apply ``event`` to the path's order: the caller (401, 403) and the id (404) before the body
    (``read_change(request)`` -> (arguments, payload)) is read and validated (400, 422)."""
    principal = caller(request, *roles)
    order_id = path_id(request, "order_id", "order")
    arguments, payload = await read_change(request) if read_change is not None else ((), None)
    row = await orders.apply_event(
        request.app.state.pool,
        order_id,
        event,
        actor=orders.ROLE_ACTOR[principal.role],
        actor_label=principal.actor,
        principal=principal,
        arguments=arguments,
        payload=payload,
    )
    if event in CELL_NOTICES:
        notify(request, order_id, CELL_NOTICES[event])
    return JSONResponse(order_view(row))


KITCHEN = (Role.RESTAURANT, Role.ADMIN)
CANCELLERS = (Role.CUSTOMER, Role.RESTAURANT, Role.ADMIN)


async def _cancellation(request: Request) -> tuple[tuple, dict]:
    data = await body(request, CancelIn) if await _has_body(request) else CancelIn()
    return (), {"reason": data.reason}


async def _ready_revision(request: Request) -> tuple[tuple, dict]:
    data = await body(request, ReadyRevision)
    return (data.seconds,), data.model_dump(exclude_none=True)


async def cancel(request: Request) -> JSONResponse:
    return await _apply(request, Event.CANCEL, CANCELLERS, _cancellation)


async def accept(request: Request) -> JSONResponse:
    return await _apply(request, Event.ACCEPT, KITCHEN)


async def start_preparing(request: Request) -> JSONResponse:
    return await _apply(request, Event.START_PREPARING, KITCHEN)


async def mark_ready(request: Request) -> JSONResponse:
    return await _apply(request, Event.MARK_READY, KITCHEN)


async def revise_ready(request: Request) -> JSONResponse:
    return await _apply(request, Event.REVISE_READY, KITCHEN, _ready_revision)


async def _has_body(request: Request) -> bool:
    return request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers


ROUTES = [
    Route("/v1/orders", place_order, methods=["POST"]),
    Route("/v1/orders", list_orders, methods=["GET"]),
    Route("/v1/orders/{order_id}", get_order, methods=["GET"]),
    Route("/v1/orders/{order_id}/events", order_events, methods=["GET"]),
    Route("/v1/orders/{order_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/orders/{order_id}/accept", accept, methods=["POST"]),
    Route("/v1/orders/{order_id}/start-preparing", start_preparing, methods=["POST"]),
    Route("/v1/orders/{order_id}/ready", mark_ready, methods=["POST"]),
    Route("/v1/orders/{order_id}/ready-estimate", revise_ready, methods=["POST"]),
]
