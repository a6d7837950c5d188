"""Bad input on every endpoint gets a JSON 4xx with a code and a message, never a 500."""

import pytest

from server.auth import mint_token
from tests.conftest import TEST_SECRET, token
from tests.server.helpers import add_item, make_restaurant, place

ENDPOINTS = [
    ("POST", "/v1/restaurants"),
    ("GET", "/v1/restaurants/nearby"),
    ("GET", "/v1/restaurants/{rid}"),
    ("PATCH", "/v1/restaurants/{rid}"),
    ("GET", "/v1/restaurants/{rid}/menu"),
    ("POST", "/v1/restaurants/{rid}/menu/items"),
    ("PATCH", "/v1/restaurants/{rid}/menu/items/{iid}"),
    ("DELETE", "/v1/restaurants/{rid}/menu/items/{iid}"),
    ("GET", "/v1/restaurants/{rid}/orders"),
    ("POST", "/v1/orders"),
    ("GET", "/v1/orders"),
    ("GET", "/v1/orders/{oid}"),
    ("GET", "/v1/orders/{oid}/events"),
    ("POST", "/v1/orders/{oid}/cancel"),
    ("POST", "/v1/orders/{oid}/accept"),
    ("POST", "/v1/orders/{oid}/start-preparing"),
    ("POST", "/v1/orders/{oid}/ready"),
    ("POST", "/v1/orders/{oid}/ready-estimate"),
    ("PUT", "/v1/drivers/me"),
    ("GET", "/v1/drivers/me"),
]
WITH_BODY = {"POST", "PATCH", "PUT"}


@pytest.fixture
async def world(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    order = (await place(customer, rest["id"], [{"item_id": item["id"]}])).json()
    return {"owner": owner, "customer": customer, "rid": rest["id"], "iid": item["id"], "oid": order["id"]}


def fill(path: str, world: dict, **override) -> str:
    return path.format(**{**{k: world[k] for k in ("rid", "iid", "oid")}, **override})


def assert_error(r, status: int | tuple, code: str | None = None):
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body


@pytest.mark.parametrize("method,path", ENDPOINTS)
async def test_authentication_required(as_role, world, method, path):
    anonymous = as_role(None)
    assert_error(await anonymous.request(method, fill(path, world)), 401, "unauthenticated")
    expired = mint_token(TEST_SECRET, "admin", "x", now=1_000_000, ttl_s=60)
    r = await anonymous.request(method, fill(path, world), headers={"authorization": f"Bearer {expired}"})
    assert_error(r, 401, "token_expired")
    forged = mint_token("another-secret-that-is-long-enough-for-hs256", "admin", "x", now=2_000_000_000 - 3600, ttl_s=7200)
    r = await anonymous.request(method, fill(path, world), headers={"authorization": f"Bearer {forged}"})
    assert_error(r, 401, "invalid_token")
    r = await anonymous.request(method, fill(path, world), headers={"authorization": "Basic abc"})
    assert_error(r, 401, "unauthenticated")


@pytest.mark.parametrize("method,path", [e for e in ENDPOINTS if e[0] in WITH_BODY])
async def test_malformed_bodies(as_role, world, method, path):
    admin = as_role("admin")
    role = {"/v1/orders": "customer", "/v1/drivers/me": "driver"}.get(path, "admin")
    api = admin if role == "admin" else as_role(role)
    url = fill(path, world)
    headers = {"content-type": "application/json", "Idempotency-Key": "k"}
    for raw, code in [(b"{not json", "malformed_json"), (b"[1, 2]", "malformed_json"), (b'"x"', "malformed_json")]:
        if path.endswith(("/accept", "/start-preparing", "/ready")):
            continue  # these take no body
        assert_error(await api.request(method, url, content=raw, headers=headers), (400, 409), None)
    big = b'{"name": "' + b"x" * 70_000 + b'"}'
    if not path.endswith(("/accept", "/start-preparing", "/ready", "/cancel")):
        assert_error(await api.request(method, url, content=big, headers=headers), 413, "body_too_large")
        wrong = {"name": 5, "price_cents": "ten", "latitude": "north", "items": "many", "vehicle": "rocket",
                 "ready_in_minutes": -1, "restaurant_id": True}
        assert_error(await api.request(method, url, json=wrong, headers=headers), (400, 422))


@pytest.mark.parametrize("method,path", [e for e in ENDPOINTS if "{" in e[1]])
@pytest.mark.parametrize("bad_id", ["abc", "-1", "0", "99999999999999999999999", "1e3", "%20"])
async def test_bad_ids_are_not_found(as_role, world, method, path, bad_id):
    admin = as_role("admin")
    url = fill(path, world, rid=bad_id) if "{rid}" in path else fill(path, world, oid=bad_id)
    kwargs = {"json": {}} if method in WITH_BODY else {}
    assert_error(await admin.request(method, url, **kwargs), (404, 422))


@pytest.mark.parametrize(
    "params",
    [
        {"lat": "91", "lng": "0"},
        {"lat": "nan", "lng": "0"},
        {"lat": "1", "lng": "inf"},
        {"lat": "1"},
        {"lat": "1", "lng": "1", "radius_m": "0"},
        {"lat": "1", "lng": "1", "radius_m": "100000000"},
        {"lat": "1", "lng": "1", "limit": "0"},
        {"lat": "1", "lng": "1", "limit": "1000"},
        {"lat": "1", "lng": "1", "cursor": "garbage"},
        {"lat": "1", "lng": "1", "cursor": "W3RydWUsMV0"},
        {"lat": "1", "lng": "1", "open_now": "maybe"},
        {"lat": "1", "lng": "1", "surprise": "1"},
    ],
)
async def test_bad_nearby_queries(as_role, params):
    assert_error(await as_role("customer").get("/v1/restaurants/nearby", params=params), 422)


async def test_bad_page_queries(as_role):
    customer = as_role("customer")
    assert_error(await customer.get("/v1/orders", params={"cursor": "%%%"}), 422, "invalid_cursor")
    assert_error(await customer.get("/v1/orders", params={"limit": "-5"}), 422, "invalid_request")
    assert_error(await customer.get("/v1/orders?limit=1&limit=2"), 422, "invalid_request")


async def test_strangers_see_404_not_403(as_role, world):
    oid = world["oid"]
    for role in ("customer", "driver", "restaurant"):
        stranger = as_role(role)
        assert_error(await stranger.get(f"/v1/orders/{oid}"), 404, "not_found")
        assert_error(await stranger.get(f"/v1/orders/{oid}/events"), 404, "not_found")
    assert_error(await as_role("customer").post(f"/v1/orders/{oid}/cancel"), 404, "not_found")
    assert_error(await as_role("restaurant").post(f"/v1/orders/{oid}/accept"), 404, "not_found")
    # The owner and the customer still see it.
    assert (await world["customer"].get(f"/v1/orders/{oid}")).status_code == 200
    assert (await world["owner"].get(f"/v1/orders/{oid}")).status_code == 200


async def test_wrong_roles_are_forbidden(as_role, world):
    customer, driver = world["customer"], as_role("driver")
    assert_error(await customer.post(f"/v1/orders/{world['oid']}/accept"), 403, "forbidden")
    assert_error(await driver.post("/v1/orders", json={}, headers={"Idempotency-Key": "k"}), 403, "forbidden")
    assert_error(await customer.put("/v1/drivers/me", json={"vehicle": "car"}), 403, "forbidden")


async def test_unknown_routes_and_methods_are_json(as_role):
    api = as_role("admin")
    assert_error(await api.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await api.delete("/v1/orders"), 405, "method_not_allowed")


async def test_driver_profile(as_role):
    driver = as_role("driver")
    assert_error(await driver.get("/v1/drivers/me"), 404)
    r = await driver.put("/v1/drivers/me", json={"vehicle": "bicycle", "capacity": 2})
    assert r.status_code == 200 and r.json()["capacity"] == 2
    assert (await driver.get("/v1/drivers/me")).json()["vehicle"] == "bicycle"
    assert_error(await driver.put("/v1/drivers/me", json={"vehicle": "bicycle", "capacity": 11}), 422)


def test_token_helper_round_trip():
    from server.auth import Role, verify_token

    principal = verify_token(TEST_SECRET, token("driver", "d-1"))
    assert (principal.sub, principal.role) == ("d-1", Role.DRIVER)
