"""Regression tests for issue 13, items 6-8: integers past their column, non-ASCII digits, U+0000, lax types,
and the order of authentication, authorisation and validation on every route of the app."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from tests.conftest import token
from tests.server.helpers import make_restaurant, place, restaurant_body
from tests.server.test_bad_input import assert_error, world  # noqa: F401 (a fixture)

INT4_PAST = str(2**31)
INT8_PAST = str(2**63)
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def forged_cursor(*values) -> str:
    """A cursor as the server would encode ``values`` (Python's json also writes huge ints, NaN, Infinity)."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


# Item 6: 500s from bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("after", [INT4_PAST, INT8_PAST, "9" * 40, "-1", "١", "1.0", " 1", "nan"])
async def test_after_past_int4_is_422(world, after):
    r = await world["customer"].get(f"/v1/orders/{world['oid']}/events", params={"after": after})
    assert_error(r, 422, "invalid_request")
    assert r.json()["error"]["details"][0]["field"] == "after"


async def test_after_within_int4_still_reads_events(world):
    r = await world["customer"].get(f"/v1/orders/{world['oid']}/events", params={"after": str(2**31 - 1)})
    assert r.status_code == 200 and r.json()["items"] == []
    r = await world["customer"].get(f"/v1/orders/{world['oid']}/events", params={"after": "0"})
    assert [e["seq"] for e in r.json()["items"]] == [1]


@pytest.mark.parametrize("values", [(2**63,), (10**30,), (0,), (-1,), (1.5,), (True,), ("12",), ("١",), (1, 2)])
async def test_id_cursors_past_int8_are_422(world, values):
    cursor = forged_cursor(*values)
    assert_error(await world["customer"].get("/v1/orders", params={"cursor": cursor}), 422, "invalid_cursor")
    r = await world["owner"].get(f"/v1/restaurants/{world['rid']}/orders", params={"cursor": cursor})
    assert_error(r, 422, "invalid_cursor")


@pytest.mark.parametrize("values", [(1.0, 2**63), (1.0, 10**30), ("nan", 1), (float("nan"), 1), (-1.0, 1), (1e400, 1), (True, 1),
                                    (1.0, "١"), (1.0,)])
async def test_nearby_cursors_past_int8_are_422(as_role, values):
    params = {"lat": "41.88", "lng": "-87.63", "cursor": forged_cursor(*values)}
    assert_error(await as_role("customer").get("/v1/restaurants/nearby", params=params), 422, "invalid_cursor")


async def test_issued_cursors_still_page(world, as_role):
    owner = world["owner"]
    for _ in range(2):
        await make_restaurant(owner)
    customer = as_role("customer")
    params = {"lat": "41.8781", "lng": "-87.6298", "radius_m": "100", "limit": "1"}
    first = (await customer.get("/v1/restaurants/nearby", params=params)).json()
    assert first["next_cursor"] is not None
    second = await customer.get("/v1/restaurants/nearby", params={**params, "cursor": first["next_cursor"]})
    assert second.status_code == 200 and second.json()["items"][0]["id"] != first["items"][0]["id"]


@pytest.mark.parametrize("raw_id", ["%C2%B2", "%C2%B9", "%D9%A1", "%EF%BC%91", "+1", "1_0", "0x1"])
async def test_non_ascii_digits_in_path_ids_are_404(world, raw_id):
    admin = world["owner"]
    for path in (f"/v1/orders/{raw_id}", f"/v1/restaurants/{raw_id}", f"/v1/restaurants/{raw_id}/menu",
                 f"/v1/restaurants/{world['rid']}/menu/items/{raw_id}"):
        method = "PATCH" if path.endswith(raw_id) and "/items/" in path else "GET"
        kwargs = {"json": {"price_cents": 1}} if method == "PATCH" else {}
        assert_error(await admin.request(method, path, **kwargs), 404, "not_found")


async def test_path_ids_in_other_scripts_do_not_read_another_row(world):
    """``/v1/restaurants/١`` used to read restaurant 1: an id in Arabic-Indic digits is no id."""
    in_other_digits = str(world["rid"]).translate(ARABIC_INDIC)
    assert_error(await world["customer"].get(f"/v1/restaurants/{in_other_digits}"), 404, "not_found")
    assert (await world["customer"].get(f"/v1/restaurants/{world['rid']}")).status_code == 200


@pytest.mark.parametrize("field", ["name", "address", "timezone", "owner_sub"])
async def test_nul_in_restaurant_text_is_422_naming_the_field(as_role, field):
    r = await as_role("admin").post("/v1/restaurants", json=restaurant_body(**{field: "Tratt\x00oria"}))
    assert_error(r, 422, "invalid_request")
    assert r.json()["error"]["details"][0]["field"] == field and "U+0000" in r.json()["error"]["message"]


async def test_nul_in_any_text_field_is_422(world, as_role):
    owner, customer, rid, oid = world["owner"], world["customer"], world["rid"], world["oid"]
    cases = [
        (owner, "POST", "/v1/restaurants", {**restaurant_body(), "cuisine_tags": ["thai", "pi\x00zza"]}, "cuisine_tags.1"),
        (owner, "PATCH", f"/v1/restaurants/{rid}", {"name": "\x00"}, "name"),
        (owner, "POST", f"/v1/restaurants/{rid}/menu/items", {"name": "Pie", "price_cents": 1, "description": "a\x00"},
         "description"),
        (owner, "PATCH", f"/v1/restaurants/{rid}/menu/items/{world['iid']}", {"name": "P\x00ie"}, "name"),
        (customer, "POST", f"/v1/orders/{oid}/cancel", {"reason": "\x00"}, "reason"),
    ]
    for api, method, path, payload, field in cases:
        r = await api.request(method, path, json=payload)
        assert_error(r, 422, "invalid_request")
        assert r.json()["error"]["details"][0]["field"] == field, (path, r.json())
    r = await place(customer, rid, [{"item_id": world["iid"]}], notes="ring\x00twice")
    assert_error(r, 422, "invalid_request")
    assert r.json()["error"]["details"][0]["field"] == "notes"
    r = await place(customer, rid, [{"item_id": world["iid"]}], key="key\x00")
    assert_error(r, 400, "invalid_idempotency_key")


@pytest.mark.parametrize("param", ["q", "cuisine", "cursor"])
async def test_nul_in_q_is_422(as_role, param):
    r = await as_role("customer").get("/v1/restaurants/nearby", params={"lat": "41.88", "lng": "-87.63", param: "pi\x00"})
    assert_error(r, 422)
    if param != "cursor":
        assert r.json()["error"]["details"][0]["field"] == param


# Item 7: lax types ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("latitude", True), ("latitude", "41.9"), ("longitude", False), ("is_open", "yes"), ("is_open", 1),
    ("prep_minutes", 12.0), ("prep_minutes", "12"), ("prep_minutes", True), ("cuisine_tags", "thai"),
    ("opening_hours", {"mon": "11:00-15:00"}), ("delivery_radius_m", 1000.0), ("name", 5),
])
async def test_lax_types_are_refused(as_role, field, value):
    r = await as_role("admin").post("/v1/restaurants", json=restaurant_body(**{field: value}))
    assert_error(r, 422, "invalid_request")
    assert r.json()["error"]["details"][0]["field"].split(".")[0] == field


async def test_lax_types_are_refused_in_every_body(world):
    owner, customer, rid = world["owner"], world["customer"], world["rid"]
    cases = [
        (owner, "PATCH", f"/v1/restaurants/{rid}", {"is_open": "no"}),
        (owner, "POST", f"/v1/restaurants/{rid}/menu/items", {"name": "Pie", "price_cents": "100"}),
        (owner, "POST", f"/v1/restaurants/{rid}/menu/items", {"name": "Pie", "price_cents": 1, "available": 0}),
        (owner, "POST", f"/v1/orders/{world['oid']}/ready-estimate", {"ready_in_minutes": 5.0}),
        (customer, "POST", f"/v1/orders/{world['oid']}/cancel", {"reason": 7}),
    ]
    for api, method, path, payload in cases:
        assert_error(await api.request(method, path, json=payload), 422, "invalid_request")
    valid = {"restaurant_id": rid, "items": [{"item_id": world["iid"]}], "dropoff": {"lat": 41.88, "lng": -87.62}}
    for change in ({"restaurant_id": str(rid)}, {"items": [{"item_id": world["iid"], "quantity": 1.0}]},
                   {"items": [{"item_id": True}]}, {"dropoff": {"lat": "41.88", "lng": -87.62}}):
        r = await customer.post("/v1/orders", json={**valid, **change}, headers={"Idempotency-Key": "lax"})
        assert_error(r, 422, "invalid_request")


async def test_integer_coordinates_are_numbers(as_role):
    r = await as_role("admin").post("/v1/restaurants", json=restaurant_body(latitude=41, longitude=-87))
    assert r.status_code == 201 and r.json()["location"] == {"lat": 41.0, "lng": -87.0}


@pytest.mark.parametrize("params", [
    {"lat": "٤١", "lng": "1"}, {"lat": "41.9", "lng": "1", "open_now": "yes"}, {"lat": "1", "lng": "1", "limit": "+5"},
    {"lat": "1", "lng": "1", "limit": "1_0"}, {"lat": "1", "lng": "1", "radius_m": "١٠٠"}, {"lat": "0x1", "lng": "1"},
])
async def test_query_numbers_and_flags_are_ascii_and_strict(as_role, params):
    assert_error(await as_role("customer").get("/v1/restaurants/nearby", params=params), 422, "invalid_request")


async def test_query_numbers_in_plain_notation_are_read(as_role):
    params = {"lat": "41.8781", "lng": "-87.6298", "radius_m": "500", "limit": "3", "open_now": "false"}
    assert (await as_role("customer").get("/v1/restaurants/nearby", params=params)).status_code == 200
    assert (await as_role("customer").get("/v1/restaurants/nearby", params={"lat": "4e1", "lng": "-87"})).status_code == 200


# Item 8: authenticate, then authorise, then validate -------------------------------------------------

PUBLIC = "public"
ANY = ("customer", "driver", "restaurant", "admin")
KITCHEN = ("restaurant", "admin")
#: Who may call each route of the app. Every route the router has must be listed (the test below checks).
ALLOWED: dict[tuple[str, str], str | tuple[str, ...]] = {
    ("GET", "/v1/health"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/v1/openapi.json"): PUBLIC,
    ("GET", "/v1/docs"): PUBLIC,
    ("GET", "/v1/docs/assets/{path}"): PUBLIC,
    ("POST", "/v1/restaurants"): KITCHEN,
    ("GET", "/v1/restaurants/nearby"): ANY,
    ("GET", "/v1/restaurants/{restaurant_id}"): ANY,
    ("PATCH", "/v1/restaurants/{restaurant_id}"): KITCHEN,
    ("DELETE", "/v1/restaurants/{restaurant_id}"): KITCHEN,
    ("GET", "/v1/restaurants/{restaurant_id}/menu"): ANY,
    ("POST", "/v1/restaurants/{restaurant_id}/menu/items"): KITCHEN,
    ("PATCH", "/v1/restaurants/{restaurant_id}/menu/items/{item_id}"): KITCHEN,
    ("DELETE", "/v1/restaurants/{restaurant_id}/menu/items/{item_id}"): KITCHEN,
    ("GET", "/v1/restaurants/{restaurant_id}/orders"): KITCHEN,
    ("POST", "/v1/orders"): ("customer",),
    ("GET", "/v1/orders"): ANY,
    ("GET", "/v1/orders/{order_id}"): ANY,
    ("GET", "/v1/orders/{order_id}/events"): ANY,
    ("POST", "/v1/orders/{order_id}/cancel"): ("customer", "restaurant", "admin"),
    ("POST", "/v1/orders/{order_id}/accept"): KITCHEN,
    ("POST", "/v1/orders/{order_id}/start-preparing"): KITCHEN,
    ("POST", "/v1/orders/{order_id}/ready"): KITCHEN,
    ("POST", "/v1/orders/{order_id}/ready-estimate"): KITCHEN,
    ("PUT", "/v1/drivers/me"): ("driver",),
    ("GET", "/v1/drivers/me"): ("driver",),
    ("GET", "/v1/admin/cells"): ("admin",),
    ("GET", "/v1/admin/stats"): ("admin",),
    ("WS", "/v1/ws/driver"): ("driver",),
    ("WS", "/v1/ws/customer"): ("customer",),
    ("WS", "/v1/ws/ops"): ("admin",),
    # The ops map's page and assets hold no data (the page asks for an admin token for /v1/ws/ops).
    ("GET", "/ops"): PUBLIC,
    ("GET", "/ops/static/{path}"): PUBLIC,
}


def app_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the app's router (``WS`` for a websocket)."""
    found = []
    for route in app.router.routes:
        if isinstance(route, WebSocketRoute):
            found.append(("WS", route.path))
        elif isinstance(route, Route):
            found += [(method, route.path) for method in sorted(route.methods - {"HEAD"})]
        elif isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            found.append(("GET", route.path + "/{path}"))
        else:
            raise AssertionError(f"a route of an unknown kind: {route!r}")
    return found


def test_every_route_is_in_the_authorisation_table(app):
    assert sorted(app_routes(app)) == sorted(ALLOWED), "list a new route's roles in ALLOWED"


async def websocket_handshake(app, path: str, query: str = "") -> dict:
    """The first message the app sends for a websocket handshake (over ASGI, with the denial-response
    extension uvicorn offers): an HTTP response start, a close, or an accept."""
    sent: list[dict] = []
    first = asyncio.Event()
    connected = False

    async def receive():
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()  # the client says nothing more

    async def send(message):
        sent.append(message)
        first.set()

    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "http_version": "1.1",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query.encode(), "headers": [],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "subprotocols": [],
             "extensions": {"websocket.http.response": {}}}
    task = asyncio.get_running_loop().create_task(app(scope, receive, send))
    try:
        await asyncio.wait_for(first.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return sent[0]


def junk_request(method: str, path: str) -> dict:
    """Arguments that would earn a 404 or 422 once past authentication and authorisation."""
    url = path.replace("{restaurant_id}", "no-such-id").replace("{item_id}", "١").replace("{order_id}", str(2**63))
    kwargs: dict = {"params": {"surprise": "\x00", "after": INT4_PAST, "limit": "-1"}}
    if method in ("POST", "PATCH", "PUT"):
        kwargs["json"] = {"surprise": True, "latitude": "north"}
        kwargs["headers"] = {"Idempotency-Key": "k"}
    return {"method": method, "url": url, **kwargs}


@pytest.mark.parametrize("method,path", sorted(ALLOWED))
async def test_authentication_then_authorisation_then_validation(app, as_role, method, path):
    allowed = ALLOWED[(method, path)]
    if allowed == PUBLIC:
        return
    wrong_roles = [role for role in ANY if role not in allowed]
    if method == "WS":
        first = await websocket_handshake(app, path)
        assert (first["type"], first.get("status")) == ("websocket.http.response.start", 401), first
        first = await websocket_handshake(app, path, "token=forged")
        assert (first["type"], first.get("status")) == ("websocket.http.response.start", 401), first
        for role in wrong_roles:
            first = await websocket_handshake(app, path, f"token={token(role, 'x')}")
            assert (first["type"], first.get("status")) == ("websocket.http.response.start", 403), (role, first)
        return
    assert_error(await as_role(None).request(**junk_request(method, path)), 401, "unauthenticated")
    for role in wrong_roles:
        assert_error(await as_role(role).request(**junk_request(method, path)), 403, "forbidden")
    for role in allowed:  # past both, the junk is refused for what it is
        r = await as_role(role).request(**junk_request(method, path))
        assert r.status_code not in (401, 403, 500), (role, r.status_code, r.text)
        assert_error(r, (400, 404, 409, 422, 429))


async def test_a_stranger_kitchen_is_forbidden_before_its_body_is_read(world, as_role):
    """Ownership is authorisation too: another restaurant's account gets 403 whatever its body holds."""
    stranger = as_role("restaurant")
    for method, path in [("PATCH", f"/v1/restaurants/{world['rid']}"),
                         ("POST", f"/v1/restaurants/{world['rid']}/menu/items"),
                         ("PATCH", f"/v1/restaurants/{world['rid']}/menu/items/{world['iid']}"),
                         ("DELETE", f"/v1/restaurants/{world['rid']}/menu/items/no-such-item"),
                         ("GET", f"/v1/restaurants/{world['rid']}/orders?limit=-1")]:
        kwargs = {"json": {"price_cents": "lots"}} if method in ("PATCH", "POST") else {}
        assert_error(await stranger.request(method, path, **kwargs), 403, "forbidden")
