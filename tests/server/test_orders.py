import asyncio
import uuid

from tests.server.helpers import CHICAGO, add_item, make_restaurant, place


async def test_place_order_prices_from_database(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner, delivery_fee_cents=300)
    pizza = await add_item(owner, rest["id"], price_cents=1250)
    soda = await add_item(owner, rest["id"], "Soda", 199)
    r = await place(customer, rest["id"], [{"item_id": pizza["id"], "quantity": 2}, {"item_id": soda["id"]}])
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["subtotal_cents"] == 2 * 1250 + 199
    assert order["delivery_fee_cents"] == 300
    assert order["total_cents"] == 2 * 1250 + 199 + 300
    assert order["status"] == "placed" and order["version"] == 1
    assert [line["name"] for line in order["items"]] == ["Margherita", "Soda"]
    # A price change later does not touch the snapshot.
    await owner.patch(f"/v1/restaurants/{rest['id']}/menu/items/{pizza['id']}", json={"price_cents": 9999})
    again = (await customer.get(f"/v1/orders/{order['id']}")).json()
    assert again["total_cents"] == order["total_cents"]
    events = (await customer.get(f"/v1/orders/{order['id']}/events")).json()["items"]
    assert [(e["seq"], e["type"], e["status"]) for e in events] == [(1, "placed", "placed")]
    assert events[0]["actor"] == f"customer:{customer.sub}"


async def test_client_prices_are_ignored_and_extra_fields_refused(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"], price_cents=1000)
    r = await place(customer, rest["id"], [{"item_id": item["id"], "price_cents": 1}])
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_request"


async def test_idempotent_placement_under_concurrent_retries(as_role, pool):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    key = uuid.uuid4().hex
    responses = await asyncio.gather(
        *(place(customer, rest["id"], [{"item_id": item["id"]}], key=key) for _ in range(12))
    )
    assert sorted(r.status_code for r in responses) == [200] * 11 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    count = await pool.fetchval(
        "SELECT count(*) FROM orders WHERE customer_id = $1 AND idempotency_key = $2", customer.sub, key
    )
    assert count == 1
    events = await pool.fetchval("SELECT count(*) FROM order_events WHERE order_id = $1", responses[0].json()["id"])
    assert events == 1


async def test_idempotency_key_reused_for_another_order(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    key = uuid.uuid4().hex
    assert (await place(customer, rest["id"], [{"item_id": item["id"]}], key=key)).status_code == 201
    r = await place(customer, rest["id"], [{"item_id": item["id"], "quantity": 3}], key=key)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "idempotency_key_reused"
    # The same key from another customer is that customer's own order.
    other = as_role("customer")
    assert (await place(other, rest["id"], [{"item_id": item["id"]}], key=key)).status_code == 201


async def test_refusals(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner, delivery_radius_m=2000)
    other = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    foreign = await add_item(owner, other["id"])
    gone = await add_item(owner, rest["id"], "Tiramisu", available=False)

    async def code(*args, **kwargs):
        r = await place(customer, *args, **kwargs)
        assert 400 <= r.status_code < 500, r.text
        return r.status_code, r.json()["error"]["code"]

    assert await code(rest["id"], [{"item_id": 999999999}]) == (422, "unknown_item")
    assert await code(rest["id"], [{"item_id": foreign["id"]}]) == (422, "unknown_item")
    assert await code(rest["id"], [{"item_id": gone["id"]}]) == (409, "item_unavailable")
    assert await code(999999999, [{"item_id": item["id"]}]) == (422, "unknown_restaurant")
    far = (CHICAGO[0] + 0.1, CHICAGO[1])  # about 11 km north
    assert await code(rest["id"], [{"item_id": item["id"]}], dropoff=far) == (422, "outside_delivery_area")
    await owner.patch(f"/v1/restaurants/{rest['id']}", json={"is_open": False})
    assert await code(rest["id"], [{"item_id": item["id"]}]) == (409, "restaurant_closed")
    r = await customer.post(
        "/v1/orders", json={"restaurant_id": rest["id"], "items": [{"item_id": item["id"]}],
                            "dropoff": {"lat": CHICAGO[0], "lng": CHICAGO[1]}}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "idempotency_key_required"


async def test_closed_by_opening_hours(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner, opening_hours={})  # open on no day at all
    item = await add_item(owner, rest["id"])
    r = await place(customer, rest["id"], [{"item_id": item["id"]}])
    assert (r.status_code, r.json()["error"]["code"]) == (409, "restaurant_closed")
    always = {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    await owner.patch(f"/v1/restaurants/{rest['id']}", json={"opening_hours": always, "timezone": "America/Chicago"})
    assert (await place(customer, rest["id"], [{"item_id": item["id"]}])).status_code == 201


async def test_kitchen_flow_and_audit_trail(as_role, pool):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    order = (await place(customer, rest["id"], [{"item_id": item["id"]}])).json()
    oid = order["id"]
    incoming = (await owner.get(f"/v1/restaurants/{rest['id']}/orders")).json()["items"]
    assert [o["id"] for o in incoming] == [oid]
    assert (await owner.post(f"/v1/orders/{oid}/accept")).json()["status"] == "accepted"
    assert (await owner.post(f"/v1/orders/{oid}/start-preparing")).json()["status"] == "preparing"
    revised = await owner.post(f"/v1/orders/{oid}/ready-estimate", json={"ready_in_minutes": 25})
    assert revised.status_code == 200, revised.text
    assert revised.json()["ready_estimate_at"] > order["ready_estimate_at"]
    ready = (await owner.post(f"/v1/orders/{oid}/ready")).json()
    assert ready["status"] == "ready" and ready["ready_at"] is not None and ready["version"] == 5
    # Too late for the customer to cancel; a second "ready" is illegal and changes nothing.
    r = await customer.post(f"/v1/orders/{oid}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "illegal_transition"
    assert (await owner.post(f"/v1/orders/{oid}/ready")).status_code == 409
    events = (await owner.get(f"/v1/orders/{oid}/events")).json()["items"]
    assert [e["type"] for e in events] == ["placed", "accept", "start_preparing", "revise_ready", "mark_ready"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    resumed = (await customer.get(f"/v1/orders/{oid}/events?after=3")).json()["items"]
    assert [e["seq"] for e in resumed] == [4, 5]
    # The restaurant cancels until pick-up.
    cancelled = (await owner.post(f"/v1/orders/{oid}/cancel", json={"reason": "out of dough"})).json()
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"] is not None
    last = await pool.fetchrow("SELECT type, payload, actor FROM order_events WHERE order_id = $1 AND seq = 6", oid)
    assert last["type"] == "cancel" and last["payload"] == {"reason": "out of dough"}
    assert (await owner.get(f"/v1/restaurants/{rest['id']}/orders")).json()["items"] == []


async def test_customer_cancels_while_cancellable(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    oid = (await place(customer, rest["id"], [{"item_id": item["id"]}])).json()["id"]
    r = await customer.post(f"/v1/orders/{oid}/cancel", json={"reason": "changed my mind"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await customer.post(f"/v1/orders/{oid}/cancel")).status_code == 409


async def test_audit_trail_is_append_only(as_role, pool):
    import asyncpg
    import pytest

    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    oid = (await place(customer, rest["id"], [{"item_id": item["id"]}])).json()["id"]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute("UPDATE order_events SET type = 'forged' WHERE order_id = $1", oid)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute("DELETE FROM order_events WHERE order_id = $1", oid)


async def test_history_pagination(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    placed = [(await place(customer, rest["id"], [{"item_id": item["id"]}])).json()["id"] for _ in range(7)]
    seen, cursor = [], None
    while True:
        r = await customer.get("/v1/orders", params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        seen += [o["id"] for o in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(placed, reverse=True)
    # Another customer sees none of them.
    assert (await as_role("customer").get("/v1/orders")).json() == {"items": [], "next_cursor": None}


async def test_ready_estimate_in_seconds(as_role, pool):
    from datetime import datetime

    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    oid = (await place(customer, rest["id"], [{"item_id": item["id"]}])).json()["id"]
    estimate = lambda order: datetime.fromisoformat(order["ready_estimate_at"])
    revised = await owner.post(f"/v1/orders/{oid}/ready-estimate", json={"ready_in_seconds": 95})
    assert revised.status_code == 200, revised.text
    row = await pool.fetchrow("SELECT ready_estimate_at - updated_at AS wait FROM orders WHERE id = $1", oid)
    assert row["wait"].total_seconds() == 95  # both stamped by the same transaction's now()
    event = await pool.fetchrow("SELECT type, payload FROM order_events WHERE order_id = $1 AND seq = 2", oid)
    assert (event["type"], event["payload"]) == ("revise_ready", {"ready_in_seconds": 95})
    in_minutes = (await owner.post(f"/v1/orders/{oid}/ready-estimate", json={"ready_in_minutes": 2})).json()
    assert (estimate(in_minutes) - estimate(revised.json())).total_seconds() > 20
    row = await pool.fetchrow("SELECT ready_estimate_at - updated_at AS wait FROM orders WHERE id = $1", oid)
    assert row["wait"].total_seconds() == 120
    now = (await owner.post(f"/v1/orders/{oid}/ready-estimate", json={"ready_in_seconds": 0})).json()
    assert now["version"] == 4


async def test_ready_estimate_bad_input(as_role, pool):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    oid = (await place(customer, rest["id"], [{"item_id": item["id"]}])).json()["id"]
    for body, field in [
        ({}, "body"),
        ({"ready_in_minutes": 5, "ready_in_seconds": 300}, "body"),
        ({"ready_in_seconds": -1}, "ready_in_seconds"),
        ({"ready_in_seconds": 14401}, "ready_in_seconds"),
        ({"ready_in_seconds": 1.5}, "ready_in_seconds"),
        ({"ready_in_seconds": "90"}, "ready_in_seconds"),
        ({"ready_in_seconds": True}, "ready_in_seconds"),
        ({"ready_in_seconds": None}, "body"),
        ({"ready_in_minutes": 241}, "ready_in_minutes"),
        ({"ready_in_hours": 1}, "ready_in_hours"),
    ]:
        r = await owner.post(f"/v1/orders/{oid}/ready-estimate", json=body)
        assert r.status_code == 422, (body, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_request", body
        assert error["details"][0]["field"] == field and error["message"].startswith(f"{field}: "), (body, error)
    assert (await owner.post(f"/v1/orders/{oid}/ready-estimate", json={"ready_in_seconds": 14400})).status_code == 200
    # Nothing else changed the order.
    assert await pool.fetchval("SELECT version FROM orders WHERE id = $1", oid) == 2


async def test_a_new_order_reaches_its_cell_as_postgres_would_describe_it(as_role, pool):
    """The front door hands a placed order to its cell from the placement's own row (no read back):
    it must be the very order a cell would rebuild from Postgres."""
    from actors.cell import LIVE_ORDER_SQL, live_order, placed_order
    from server.auth import Principal, Role
    from server.schemas import OrderIn
    from store import orders

    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner, prep_minutes=17, latitude=CHICAGO[0] + 0.01, longitude=CHICAGO[1] - 0.02)
    item = await add_item(owner, rest["id"])
    body = OrderIn.model_validate({"restaurant_id": rest["id"], "items": [{"item_id": item["id"]}],
                                   "dropoff": {"lat": CHICAGO[0] + 0.015, "lng": CHICAGO[1] - 0.01}})
    row, created = await orders.place_order(pool, Principal(customer.sub, Role.CUSTOMER), uuid.uuid4().hex, "h", body)
    assert created
    assert placed_order(row) == live_order(await pool.fetchrow(LIVE_ORDER_SQL, row["id"]))


async def test_erasing_a_restaurant_takes_its_finished_orders_and_their_trail(as_role, pool):
    """``DELETE /v1/restaurants/{id}`` (``simulate --cleanup``): refused while an order is active, then removes the
    restaurant, its menu, its orders and their events; the audit trail stays append-only outside it."""
    import asyncpg
    import pytest

    owner, customer, stranger, admin = as_role("restaurant"), as_role("customer"), as_role("restaurant"), as_role("admin")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    oid = (await place(customer, rest["id"], [{"item_id": item["id"]}])).json()["id"]
    kept = await make_restaurant(owner)
    kept_oid = (await place(customer, kept["id"], [{"item_id": (await add_item(owner, kept["id"]))["id"]}])).json()["id"]

    busy = await owner.delete(f"/v1/restaurants/{rest['id']}")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "active_orders", busy.text
    assert (await stranger.delete(f"/v1/restaurants/{rest['id']}")).status_code == 403
    assert (await customer.delete(f"/v1/restaurants/{rest['id']}")).status_code == 403
    assert (await admin.post(f"/v1/orders/{oid}/cancel", json={"reason": "test"})).status_code == 200

    erased = await owner.delete(f"/v1/restaurants/{rest['id']}")
    assert erased.status_code == 204, erased.text
    assert (await owner.get(f"/v1/restaurants/{rest['id']}")).status_code == 404
    assert (await customer.get(f"/v1/restaurants/{rest['id']}/menu")).status_code == 404
    assert (await admin.get(f"/v1/orders/{oid}")).status_code == 404
    assert await pool.fetchval("SELECT count(*) FROM order_events WHERE order_id = $1", oid) == 0
    assert await pool.fetchval("SELECT count(*) FROM menu_items WHERE restaurant_id = $1", rest["id"]) == 0
    assert (await owner.delete(f"/v1/restaurants/{rest['id']}")).status_code == 404

    # The other restaurant and its trail are untouched, and its trail still refuses deletion.
    assert (await admin.get(f"/v1/orders/{kept_oid}")).status_code == 200
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute("DELETE FROM order_events WHERE order_id = $1", kept_oid)


async def test_an_order_racing_the_erasure_of_its_restaurant_is_refused_not_a_500(as_role, pool, monkeypatch):
    """The restaurant is erased between placement's reads and its insert: the foreign key refuses the order,
    and the customer gets the same 422 ``unknown_restaurant`` as for a restaurant that never existed."""
    from store import catalog, orders

    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    priced_lines = orders._priced_lines

    async def erased_meanwhile(conn, order):
        lines = await priced_lines(conn, order)
        async with pool.acquire() as other:
            assert await catalog.erase_restaurant(other, rest["id"]) == (True, 0)
        return lines

    monkeypatch.setattr(orders, "_priced_lines", erased_meanwhile)
    reply = await place(customer, rest["id"], [{"item_id": item["id"]}])
    assert reply.status_code == 422 and reply.json()["error"]["code"] == "unknown_restaurant", reply.text
