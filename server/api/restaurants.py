"""Restaurant onboarding, updates, nearby search, menus, and the kitchen's order queue."""

from __future__ import annotations

import datetime as dt
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api.common import body, caller, decode_cursor, encode_cursor, page, path_id, query
from server.api.views import item_view, order_view, restaurant_view
from server.auth import Principal, Role
from server.catalog_cache import CachedMenu, CatalogCache
from server.catalog_replica import OpenClock
from server.errors import ApiError, not_found
from server.responses import JSONResponse, dumps
from server.schemas import (
    ID_CURSOR,
    NEARBY_CURSOR,
    MenuItemIn,
    MenuItemPatch,
    NearbyQuery,
    RestaurantIn,
    RestaurantOrdersQuery,
    RestaurantPatch,
)
from store import catalog, orders


def _catalog(request: Request) -> CatalogCache | None:
    """This process's catalog caches, when the app runs them."""
    return getattr(request.app.state, "catalog", None)


def _json(body: bytes) -> Response:
    """An already rendered JSON body."""
    return Response(body, media_type="application/json")


async def _owned_restaurant(request: Request) -> tuple[int, Principal]:
    """The caller (a restaurant or an admin) and the path's restaurant id, checked to belong to the caller
    (admins may touch any): 401, 403, then 404, before the request's body is read."""
    principal = caller(request, Role.RESTAURANT, Role.ADMIN)
    restaurant_id = path_id(request, "restaurant_id", "restaurant")
    async with request.app.state.pool.acquire() as conn:
        owner = await catalog.restaurant_owner(conn, restaurant_id)
    if owner is None:
        raise not_found("restaurant")
    if principal.role is not Role.ADMIN and owner != principal.sub:
        raise ApiError(403, "forbidden", "this restaurant belongs to another account")
    return restaurant_id, principal


async def create_restaurant(request: Request) -> JSONResponse:
    principal = caller(request, Role.RESTAURANT, Role.ADMIN)
    data = await body(request, RestaurantIn)
    if data.owner_sub is not None and principal.role is not Role.ADMIN:
        raise ApiError(403, "forbidden", "only an admin may onboard a restaurant for another account")
    settings = request.app.state.settings
    fields = data.model_dump(exclude={"owner_sub"})
    fields["delivery_radius_m"] = data.delivery_radius_m or settings.default_delivery_radius_m
    if data.delivery_fee_cents is None:
        fields["delivery_fee_cents"] = settings.default_delivery_fee_cents
    async with request.app.state.pool.acquire() as conn:
        row = await catalog.create_restaurant(conn, data.owner_sub or principal.sub, fields)
    if (cache := _catalog(request)) is not None:
        cache.restaurant_written(row)
    return JSONResponse(restaurant_view(row, with_owner=True), status_code=201)


async def update_restaurant(request: Request) -> JSONResponse:
    restaurant_id, _ = await _owned_restaurant(request)
    data = await body(request, RestaurantPatch)
    changes = data.model_dump(exclude_unset=True)
    nulls = sorted(k for k, v in changes.items() if v is None and k != "opening_hours")
    if nulls:
        raise ApiError(422, "invalid_request", f"{nulls[0]}: may not be null")
    async with request.app.state.pool.acquire() as conn:
        row = (
            await catalog.update_restaurant(conn, restaurant_id, changes)
            if changes
            else await catalog.get_restaurant(conn, restaurant_id)
        )
    if row is None:
        raise not_found("restaurant")
    if changes and (cache := _catalog(request)) is not None:
        cache.restaurant_written(row)
    return JSONResponse(restaurant_view(row, with_owner=True))


async def erase_restaurant(request: Request) -> Response:
    """Delete the restaurant with its menu and its (finished) orders and their audit trails: 204. 409
    ``active_orders`` while an order of it is still being cooked or delivered (cancel or deliver it first)."""
    restaurant_id, _ = await _owned_restaurant(request)
    async with request.app.state.pool.acquire() as conn:
        erased, active = await catalog.erase_restaurant(conn, restaurant_id)
    if not erased:
        if active:
            raise ApiError(409, "active_orders", f"{active} order(s) of this restaurant are still being cooked or "
                                                 "delivered; cancel or deliver them first")
        raise not_found("restaurant")
    if (cache := _catalog(request)) is not None:
        cache.restaurant_erased(restaurant_id)
    return Response(status_code=204)


async def get_restaurant(request: Request) -> JSONResponse:
    principal = caller(request)
    restaurant_id = path_id(request, "restaurant_id", "restaurant")
    async with request.app.state.pool.acquire() as conn:
        row = await catalog.get_restaurant(conn, restaurant_id)
    if row is None:
        raise not_found("restaurant")
    return JSONResponse(restaurant_view(row, with_owner=_sees_owner(principal, row["owner_sub"])))


def _sees_owner(principal: Principal, owner_sub: str) -> bool:
    """Only the restaurant's own account and admins see who owns it."""
    return principal.role is Role.ADMIN or (principal.role is Role.RESTAURANT and principal.sub == owner_sub)


async def nearby(request: Request) -> Response:
    """Nearest first; answered from this process's replica when it is ready, else in SQL."""
    caller(request)
    params = query(request, NearbyQuery)
    after = decode_cursor(params.cursor, NEARBY_CURSOR) if params.cursor else None
    cache = _catalog(request)
    if cache is not None and cache.replica.ready and params.q is None:
        found = cache.replica.nearby(
            lat=params.lat, lng=params.lng, radius_m=params.radius_m, cuisine=params.cuisine,
            open_now=params.open_now, after=after, limit=params.limit + 1,
            clock=OpenClock(dt.datetime.now(dt.timezone.utc)),
        )
        etas = _delivery_etas(request, lambda: cache.replica.quote_points(found, params.limit), params)
        return _json(cache.replica.page_bytes(found, params.limit, etas))
    async with request.app.state.pool.acquire() as conn:
        rows = await catalog.nearby(
            conn,
            lat=params.lat,
            lng=params.lng,
            radius_m=params.radius_m,
            cuisine=params.cuisine,
            name_contains=params.q,
            open_now=params.open_now,
            after=after,
            limit=params.limit + 1,
        )
    cursors = {row["id"]: encode_cursor(row["distance_m"], row["id"]) for row in rows}
    views = [restaurant_view(r) for r in rows]
    etas = _delivery_etas(request, lambda: [(r["latitude"], r["longitude"], r["prep_minutes"])
                                            for r in rows[:params.limit]], params)
    for view, eta in zip(views, etas or [None] * len(views)):  # an extra row, if any, only makes the cursor
        view["delivery_eta"] = eta
    return JSONResponse(page(views, params.limit, lambda v: cursors[v["id"]]))


def _delivery_etas(request: Request, restaurants, params: NearbyQuery) -> list | None:
    """The ``delivery_eta`` of each restaurant of the page (``restaurants()``: their ``(lat, lng, prep_minutes)``)
    for the searcher's point, from this front door's board of the cells' couriers (``server.gateway.eta_board``);
    None (every one null) without live dispatch."""
    board = getattr(request.app.state, "eta_board", None)
    if board is None:
        return None
    return board.quotes(time.time(), restaurants(), params.lat, params.lng)


async def get_menu(request: Request) -> Response:
    """The menu with its current status; served from this process's menu cache when it runs one."""
    caller(request)
    restaurant_id = path_id(request, "restaurant_id", "restaurant")
    pool = request.app.state.pool

    async def load() -> CachedMenu | None:
        async with pool.acquire() as conn:
            restaurant, items, active_orders = await catalog.menu(conn, restaurant_id)
        if restaurant is None:
            return None
        clock = OpenClock(dt.datetime.now(dt.timezone.utc))
        open_now = clock.is_open(restaurant["is_open"], restaurant["opening_hours"], restaurant["timezone"])
        body = dumps({
            "restaurant": restaurant_view(restaurant, open_now=open_now),
            "status": {
                "open_now": open_now,
                "prep_minutes": restaurant["prep_minutes"],
                "active_orders": active_orders,
            },
            "items": [item_view(i) for i in items],
        })
        return CachedMenu(body, time_dependent=restaurant["opening_hours"] is not None)

    cache = _catalog(request)
    if cache is not None:
        body = await cache.menus.get(restaurant_id, load)
    else:
        loaded = await load()
        body = None if loaded is None else loaded.body
    if body is None:
        raise not_found("restaurant")
    return _json(body)


async def create_item(request: Request) -> JSONResponse:
    restaurant_id, _ = await _owned_restaurant(request)
    data = await body(request, MenuItemIn)
    async with request.app.state.pool.acquire() as conn:
        row = await catalog.create_item(conn, restaurant_id, data.model_dump())
    _menu_written(request, restaurant_id)
    return JSONResponse(item_view(row), status_code=201)


async def update_item(request: Request) -> JSONResponse:
    restaurant_id, _ = await _owned_restaurant(request)
    item_id = path_id(request, "item_id", "menu item")
    data = await body(request, MenuItemPatch)
    changes = data.model_dump(exclude_unset=True)
    nulls = sorted(k for k, v in changes.items() if v is None)
    if nulls:
        raise ApiError(422, "invalid_request", f"{nulls[0]}: may not be null")
    async with request.app.state.pool.acquire() as conn:
        row = await catalog.update_item(conn, restaurant_id, item_id, changes)
    if row is None:
        raise not_found("menu item")
    _menu_written(request, restaurant_id)
    return JSONResponse(item_view(row))


async def delete_item(request: Request) -> JSONResponse:
    restaurant_id, _ = await _owned_restaurant(request)
    item_id = path_id(request, "item_id", "menu item")
    async with request.app.state.pool.acquire() as conn:
        deleted = await catalog.delete_item(conn, restaurant_id, item_id)
    if not deleted:
        raise not_found("menu item")
    _menu_written(request, restaurant_id)
    return JSONResponse({"deleted": item_id})


def _menu_written(request: Request, restaurant_id: int) -> None:
    if (cache := _catalog(request)) is not None:
        cache.menu_written(restaurant_id)


async def restaurant_orders(request: Request) -> JSONResponse:
    restaurant_id, principal = await _owned_restaurant(request)
    params = query(request, RestaurantOrdersQuery)
    before = decode_cursor(params.cursor, ID_CURSOR)[0] if params.cursor else None
    async with request.app.state.pool.acquire() as conn:
        rows = await orders.list_orders(
            conn, principal, before_id=before, limit=params.limit + 1, restaurant_id=restaurant_id,
            active_only=params.active,
        )
    return JSONResponse(page([order_view(r) for r in rows], params.limit, lambda v: encode_cursor(v["id"])))


ROUTES = [
    Route("/v1/restaurants", create_restaurant, methods=["POST"]),
    Route("/v1/restaurants/nearby", nearby, methods=["GET"]),
    Route("/v1/restaurants/{restaurant_id}", get_restaurant, methods=["GET"]),
    Route("/v1/restaurants/{restaurant_id}", update_restaurant, methods=["PATCH"]),
    Route("/v1/restaurants/{restaurant_id}", erase_restaurant, methods=["DELETE"]),
    Route("/v1/restaurants/{restaurant_id}/menu", get_menu, methods=["GET"]),
    Route("/v1/restaurants/{restaurant_id}/menu/items", create_item, methods=["POST"]),
    Route("/v1/restaurants/{restaurant_id}/menu/items/{item_id}", update_item, methods=["PATCH"]),
    Route("/v1/restaurants/{restaurant_id}/menu/items/{item_id}", delete_item, methods=["DELETE"]),
    Route("/v1/restaurants/{restaurant_id}/orders", restaurant_orders, methods=["GET"]),
]
