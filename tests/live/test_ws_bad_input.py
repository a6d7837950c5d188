"""Garbage over the websockets gets error frames, abuse gets 1008, and the server keeps serving."""

import asyncio
import json
import uuid

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients.customer import CustomerClient
from clients.http import ApiClient
from clients.ws import ws_url
from tests.conftest import token
from tests.live.test_end_to_end import setup_restaurant
from tests.waiting import DEADLINE_S


async def healthy(live) -> bool:
    """The server still answers (an async call: the server runs in this event loop)."""
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        return (await client.get(f"{live.url}/v1/health")).status_code == 200


async def recv(socket) -> dict:
    frame = await socket.recv()
    return msgpack.unpackb(frame) if isinstance(frame, bytes) else __import__("json").loads(frame)


async def test_malformed_frames_get_error_frames(live, spot, served):
    url = ws_url(live.url, "/v1/ws/driver", token("driver", f"d-{uuid.uuid4().hex[:8]}"))
    async with connect(url) as socket:
        assert (await recv(socket))["type"] == "welcome"
        cases = [
            (b"\xc1", "malformed_frame"),
            (msgpack.packb([1, 2, 3]), "malformed_frame"),
            (msgpack.packb({"type": "gps", "lat": "north", "lng": 0}), "invalid_message"),
            (msgpack.packb({"type": "gps", "lat": 95.0, "lng": 0}), "invalid_message"),
            (msgpack.packb({"type": "gps", "lat": 1.0, "lng": -181}), "invalid_message"),
            (msgpack.packb({"type": "self_destruct"}), "invalid_message"),
            (msgpack.packb({"type": "gps", "lat": 1.0, "lng": 1.0, "driver_id": "someone-else"}), "invalid_message"),
            (msgpack.packb({"type": "accept", "offer_id": "offer-of-another-driver"}), "no_position"),
            (b"\x81\xa4type\xda" + (6000).to_bytes(2, "big") + b"x" * 6000, "frame_too_large"),
            ('{"type": "gps", "lat": 1, "lng": ', "malformed_frame"),
        ]
        for frame, code in cases:
            await socket.send(frame)
            reply = await recv(socket)
            assert (reply["type"], reply["code"]) == ("error", code), (frame[:40], reply)
        await socket.send(msgpack.packb({"type": "gps", "lat": spot[0], "lng": spot[1]}))
        await socket.send(msgpack.packb({"type": "accept", "offer_id": "offer-of-another-driver"}))
        reply = await recv(socket)
        assert (reply["type"], reply["code"]) == ("error", "unknown_offer")
        await socket.send(msgpack.packb({"type": "delivered", "order_id": 123456789}))
        reply = await recv(socket)
        assert (reply["type"], reply["code"]) == ("error", "unknown_order")
        await socket.send(msgpack.packb({"type": "ping"}))
        assert (await recv(socket))["type"] == "pong"
    assert await healthy(live)


async def test_plain_gps_takes_the_fast_path_and_the_rest_the_full_one(live, spot, served):
    """Fixes are taken as uvicorn parses them (``server.frame_sink``), except those the full validator must
    judge; both paths reach the gateway, and a bad fix still gets its error frame (a float ``t`` too: strict)."""
    stats = live.app.state.gateway.stats
    fast, taken = stats["gps_fast"], stats["gps_in"]
    url = ws_url(live.url, "/v1/ws/driver", token("driver", f"d-{uuid.uuid4().hex[:8]}"))
    async with connect(url) as socket:
        assert (await recv(socket))["type"] == "welcome"
        for i in range(3):
            await socket.send(msgpack.packb({"type": "gps", "lat": spot[0], "lng": spot[1] + i * 1e-4, "seq": i}))
        await socket.send(f'{{"type": "gps", "lat": {spot[0]}, "lng": {spot[1]}}}')  # JSON text frame
        for refused in ({"type": "gps", "lat": spot[0], "lng": spot[1], "t": 1.0}, {"type": "gps", "lat": "north", "lng": spot[1]}):
            await socket.send(msgpack.packb(refused))
            reply = await asyncio.wait_for(recv(socket), DEADLINE_S)
            assert (reply["type"], reply["code"]) == ("error", "invalid_message"), refused
        await socket.send(msgpack.packb({"type": "ping"}))
        assert (await recv(socket))["type"] == "pong"
    assert stats["gps_fast"] - fast == 3
    assert stats["gps_in"] - taken == 4


async def test_lax_types_on_the_driver_socket_are_refused(live, spot):
    """Issue 13 item 7: a string or bool latitude is refused over msgpack and JSON alike; an int one is a number."""
    whole = (float(int(spot[0])), float(int(spot[1])))  # the integer fix must land where the deployment serves
    owner = ApiClient(live.url, token("restaurant", f"r-{uuid.uuid4().hex[:8]}"))
    await owner.create_restaurant(name="Whole", address="1 Integer St", latitude=whole[0], longitude=whole[1],
                                  prep_minutes=1)
    stats = live.app.state.gateway.stats
    taken = stats["gps_in"]
    url = ws_url(live.url, "/v1/ws/driver", token("driver", f"d-{uuid.uuid4().hex[:8]}"))
    async with connect(url) as socket:
        assert (await recv(socket))["type"] == "welcome"
        lat, lng = round(spot[0], 4), round(spot[1], 4)
        for frame in (f'{{"type": "gps", "lat": "{lat}", "lng": {lng}}}', f'{{"type": "gps", "lat": true, "lng": {lng}}}',
                      msgpack.packb({"type": "gps", "lat": str(lat), "lng": lng}),
                      msgpack.packb({"type": "gps", "lat": True, "lng": lng})):
            await socket.send(frame)
            reply = await asyncio.wait_for(recv(socket), 10)
            assert (reply["type"], reply["code"]) == ("error", "invalid_message") and "lat" in reply["message"], frame
        await socket.send(msgpack.packb({"type": "gps", "lat": int(lat), "lng": int(lng)}))
        await socket.send(msgpack.packb({"type": "ping"}))
        assert (await recv(socket))["type"] == "pong"
    assert stats["gps_in"] - taken == 1


async def test_after_seq_past_int4_keeps_the_socket_open(live, spot):
    """Issue 13 item 6: ``after_seq`` 2**31 crashed the customer's socket (an int4 overflow in Postgres)."""
    owner, rest, [item] = await setup_restaurant(live, spot)
    customer = f"c-{uuid.uuid4().hex[:8]}"
    order = await ApiClient(live.url, token("customer", customer)).place_order(
        rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
    async with connect(ws_url(live.url, "/v1/ws/customer", token("customer", customer))) as socket:
        for after_seq in (2**31, 2**63, 2**64 - 1):
            await socket.send(msgpack.packb({"type": "subscribe", "order_id": order["id"], "after_seq": after_seq}))
            reply = await asyncio.wait_for(recv(socket), 10)
            assert (reply["type"], reply["code"]) == ("error", "invalid_message") and "after_seq" in reply["message"]
        await socket.send(msgpack.packb({"type": "subscribe", "order_id": order["id"], "after_seq": 2**31 - 1}))
        reply = await asyncio.wait_for(recv(socket), 10)
        assert (reply["type"], reply["code"]) == ("error", "after_seq_ahead"), reply  # past the order's last event
        await socket.send(msgpack.packb({"type": "ping"}))
        assert (await asyncio.wait_for(recv(socket), 10))["type"] == "pong"
    assert await healthy(live)


async def test_repeated_abuse_is_closed_with_1008(live):
    url = ws_url(live.url, "/v1/ws/driver", token("driver", f"d-{uuid.uuid4().hex[:8]}"))
    async with connect(url) as socket:
        await recv(socket)
        with pytest.raises(ConnectionClosed) as info:
            for _ in range(100):
                await socket.send(b"\xc1garbage")
                await recv(socket)
        assert info.value.rcvd.code == 1008
    assert await healthy(live)


async def test_gps_flood_is_rate_limited(live, spot, served):
    url = ws_url(live.url, "/v1/ws/driver", token("driver", f"d-{uuid.uuid4().hex[:8]}"))
    async with connect(url) as socket:
        await recv(socket)
        for _ in range(15):
            await socket.send(msgpack.packb({"type": "gps", "lat": spot[0], "lng": spot[1]}))
        reply = await recv(socket)
        assert (reply["type"], reply["code"]) == ("error", "rate_limited")


async def test_bad_tokens_and_roles_are_refused(live):
    """Issue 13 item 8: as over HTTP, no valid token is a 401 and a wrong role a 403, with the JSON error."""
    for url, status, code in [
        (ws_url(live.url, "/v1/ws/driver", "not-a-jwt"), 401, "invalid_token"),
        (f"{ws_url(live.url, '/v1/ws/customer', 'x').split('?')[0]}", 401, "unauthenticated"),
        (ws_url(live.url, "/v1/ws/driver", token("customer", "c-1")), 403, "forbidden"),
        (ws_url(live.url, "/v1/ws/customer", token("driver", "d-1")), 403, "forbidden"),
    ]:
        with pytest.raises(InvalidStatus) as info:
            async with connect(url) as socket:
                await socket.recv()
        response = info.value.response
        assert response.status_code == status, url
        assert json.loads(response.body)["error"]["code"] == code


async def test_stranger_cannot_follow_an_order(live, spot):
    owner, rest, [item] = await setup_restaurant(live, spot)
    owner_customer = f"c-{uuid.uuid4().hex[:8]}"
    order = await ApiClient(live.url, token("customer", owner_customer)).place_order(
        rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
    async with CustomerClient(live.url, token("customer", f"c-{uuid.uuid4().hex[:8]}")) as stranger:
        await stranger.follow(order["id"])
        await stranger.wait_for(lambda c: c.errors, timeout_s=DEADLINE_S)
        assert stranger.errors[0]["code"] == "not_found" and not stranger.events
    async with CustomerClient(live.url, token("customer", owner_customer)) as customer:
        await customer.follow(order["id"])
        await customer.wait_for(lambda c: c.statuses(order["id"]), timeout_s=DEADLINE_S)
        assert customer.statuses(order["id"])[0] == "placed"
