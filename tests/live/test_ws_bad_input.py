"""Garbage over the websockets gets error frames, abuse gets 1008, and the server keeps serving."""

import asyncio
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


async def healthy(live) -> bool:
    """The server still answers (an async call: the server runs in this event loop)."""
    async with httpx.AsyncClient() as client:
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
    judge; both paths reach the gateway, and a bad fix still gets its error frame."""
    stats = live.app.state.gateway.stats
    fast, taken = stats["gps_fast"], stats["gps_in"]
    url = ws_url(live.url, "/v1/ws/driver", token("driver", f"d-{uuid.uuid4().hex[:8]}"))
    async with connect(url) as socket:
        assert (await recv(socket))["type"] == "welcome"
        for i in range(3):
            await socket.send(msgpack.packb({"type": "gps", "lat": spot[0], "lng": spot[1] + i * 1e-4, "seq": i}))
        await socket.send(msgpack.packb({"type": "gps", "lat": spot[0], "lng": spot[1], "t": 1.0}))  # int as float
        await socket.send(f'{{"type": "gps", "lat": {spot[0]}, "lng": {spot[1]}}}')  # JSON text frame
        await socket.send(msgpack.packb({"type": "gps", "lat": "north", "lng": spot[1]}))
        reply = await asyncio.wait_for(recv(socket), 10)
        assert (reply["type"], reply["code"]) == ("error", "invalid_message")
        await socket.send(msgpack.packb({"type": "ping"}))
        assert (await recv(socket))["type"] == "pong"
    assert stats["gps_fast"] - fast == 3
    assert stats["gps_in"] - taken == 5


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
    for url in [
        ws_url(live.url, "/v1/ws/driver", "not-a-jwt"),
        ws_url(live.url, "/v1/ws/driver", token("customer", "c-1")),
        ws_url(live.url, "/v1/ws/customer", token("driver", "d-1")),
    ]:
        with pytest.raises((InvalidStatus, ConnectionClosed)):
            async with connect(url) as socket:
                await socket.recv()


async def test_stranger_cannot_follow_an_order(live, spot):
    owner, rest, [item] = await setup_restaurant(live, spot)
    owner_customer = f"c-{uuid.uuid4().hex[:8]}"
    order = await ApiClient(live.url, token("customer", owner_customer)).place_order(
        rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
    async with CustomerClient(live.url, token("customer", f"c-{uuid.uuid4().hex[:8]}")) as stranger:
        await stranger.follow(order["id"])
        await stranger.wait_for(lambda c: c.errors, timeout_s=10)
        assert stranger.errors[0]["code"] == "not_found" and not stranger.events
    async with CustomerClient(live.url, token("customer", owner_customer)) as customer:
        await customer.follow(order["id"])
        await customer.wait_for(lambda c: c.statuses(order["id"]), timeout_s=10)
        assert customer.statuses(order["id"])[0] == "placed"
