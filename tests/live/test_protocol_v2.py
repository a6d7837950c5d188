"""Protocol v2 through the real server (issue 16): what an app built from ``docs/protocol.md`` alone meets."""

import asyncio
import json
import time
import uuid

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import wire
from clients.customer import CustomerClient
from clients.driver import DriverClient
from clients.http import ApiClient
from clients.ws import ws_url
from tests.conftest import token
from tests.events import gapless, lifecycle
from tests.live.conftest import LIVE_PARAMS, streaming_gps
from tests.live.test_end_to_end import setup_restaurant
from tests.live.test_faults import take_job
from tests.waiting import DEADLINE_S, eventually


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def recv(socket) -> dict:
    return wire.load(await asyncio.wait_for(socket.recv(), DEADLINE_S))


async def test_handshake_refusals_say_why(live):
    """Item 1: a bad encoding, a bad token and reconnecting too fast are told apart by status and code."""
    customer = token("customer", unique("c"))
    for url, status, code in [
        (ws_url(live.url, "/v1/ws/customer", customer) + "&encoding=xml", 400, "invalid_encoding"),
        (ws_url(live.url, "/v1/ws/customer", "not-a-jwt"), 401, "invalid_token"),
    ]:
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == status
        assert json.loads(info.value.response.body)["error"]["code"] == code
    refused = None
    for _ in range(3 * int(live.app.state.settings.rate_limits.ws_connect.burst)):
        try:
            async with connect(ws_url(live.url, "/v1/ws/customer", customer)):
                pass
        except InvalidStatus as exc:
            refused = exc.response
            break
    assert refused is not None, "a burst of reconnects was never refused"
    assert refused.status_code == wire.HANDSHAKE_REFUSALS["reconnecting_too_fast"] == 429
    assert json.loads(refused.body)["error"]["code"] == "reconnecting_too_fast"


async def test_the_connection_chooses_its_encoding(live, spot, served):
    """Item 5: answers follow the encoding chosen at the handshake, not the last frame's."""
    url = ws_url(live.url, "/v1/ws/driver", token("driver", unique("d")))
    async with connect(url + "&encoding=json") as socket:
        welcome = await asyncio.wait_for(socket.recv(), DEADLINE_S)
        assert isinstance(welcome, str) and json.loads(welcome)["protocol"] == wire.PROTOCOL_VERSION == 2
        await socket.send(msgpack.packb({"type": "ping", "id": "p1"}))  # a binary frame...
        pong = await asyncio.wait_for(socket.recv(), DEADLINE_S)
        assert isinstance(pong, str) and json.loads(pong)["re"] == "p1"  # ...answered in JSON
    async with connect(url) as socket:
        assert isinstance(await asyncio.wait_for(socket.recv(), DEADLINE_S), bytes)
        await socket.send('{"type": "ping", "id": "p2"}')  # a text frame, answered in msgpack
        pong = await asyncio.wait_for(socket.recv(), DEADLINE_S)
        assert isinstance(pong, bytes) and msgpack.unpackb(pong)["re"] == "p2"


async def test_large_frames_get_an_error_frame_and_the_socket_stays_open(live):
    """Item 6: a 100 KiB frame is refused with ``frame_too_large``, not a 1009 close."""
    async with connect(ws_url(live.url, "/v1/ws/driver", token("driver", unique("d")))) as socket:
        assert (await recv(socket))["type"] == "welcome"
        await socket.send(msgpack.packb({"type": "ping", "pad": "x" * 100 * 1024}))
        reply = await recv(socket)
        assert (reply["type"], reply["code"], reply["retryable"]) == ("error", "frame_too_large", False)
        await socket.send(msgpack.packb({"type": "ping"}))
        assert (await recv(socket))["type"] == "pong"


async def test_commands_are_retry_safe_and_errors_name_their_message(live, spot):
    """Items 3 and 4: a repeated command id gets the same answer; errors carry ``re``; ``welcome`` carries the
    driver's live state (open offer, job) and the server's time, also after the app restarted."""
    owner, rest, [item] = await setup_restaurant(live, spot)
    api = ApiClient(live.url, token("customer", unique("c")))
    driver_token = token("driver", unique("d"))
    here = (spot[0] + 0.001, spot[1])
    async with DriverClient(live.url, driver_token) as driver, streaming_gps(driver, lambda: here):
        welcome = await driver.next("welcome", timeout_s=DEADLINE_S)
        assert welcome["protocol"] == 2 and abs(welcome["server_time"] - time.time()) < DEADLINE_S

        async def refusal():  # sent again while the cell has not had the driver's first fix (retryable)
            await driver.link.send(wire.AcceptOffer(offer_id="no-such-offer", id="wrong-1"))
            refused = await driver.next("error", timeout_s=DEADLINE_S)
            return None if refused["code"] == "unknown_driver" and refused["retryable"] else refused

        refused = await eventually(refusal, what="a refusal other than unknown_driver")
        assert (refused["code"], refused["re"], refused["retryable"]) == ("unknown_offer", "wrong-1", False)
        order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        offer = await driver.next("offer", timeout_s=DEADLINE_S)
        # The app crashed (its socket dropped) and comes back: the welcome shows the open offer.
        await driver.link.drop()
        back = await driver.next("welcome", timeout_s=DEADLINE_S)
        assert back["state"] == "offered" and back["offer"]["offer_id"] == offer["offer_id"]
        # A second socket of the same driver (the app restarted): its welcome shows the open offer.
        async with DriverClient(live.url, driver_token) as restarted, streaming_gps(restarted, lambda: here):
            again = await restarted.next("welcome", timeout_s=DEADLINE_S)
            assert again["state"] == "offered" and again["offer"]["offer_id"] == offer["offer_id"]
            assert [o["order_id"] for o in again["offer"]["orders"]] == [order["id"]]
            for _ in range(2):
                await restarted.link.send(wire.AcceptOffer(offer_id=offer["offer_id"], id="acc-1"))
            first = await restarted.next("ack", "error", timeout_s=DEADLINE_S)
            second = await restarted.next("ack", "error", timeout_s=DEADLINE_S)
            assert first == second
            assert (first["type"], first["re"], first["offer_id"]) == ("ack", "acc-1", offer["offer_id"])
            assigned = await restarted.next("assigned", timeout_s=DEADLINE_S)
            for _ in range(2):
                await restarted.link.send(wire.AtRestaurant(job_id=assigned["job_id"], id="arr-1"))
            replies = [await restarted.next("ack", "error", timeout_s=DEADLINE_S) for _ in range(2)]
            assert replies[0] == replies[1] and replies[0]["type"] == "ack", replies
    # The app restarts once more, after its socket closed: welcome carries the job from the cell.
    async with DriverClient(live.url, driver_token) as driver:
        welcome = await driver.next("welcome", timeout_s=DEADLINE_S)
        assert welcome["orders"] == [order["id"]] and welcome["job"]["job_id"] == assigned["job_id"]
        assert welcome["state"] == "at_restaurant" and welcome["offer"] is None


async def test_a_driver_whose_gps_lapses_is_told_and_matchable_again_when_it_returns(live, spot):
    """Item 2: a driver silent past the heartbeat TTL (pings do not count) gets ``job_withdrawn`` reason
    ``driver_lost``; when its fixes resume it is the only driver near, and the order is offered to it again."""
    owner, rest, [item] = await setup_restaurant(live, spot)
    api = ApiClient(live.url, token("customer", unique("c")))
    async with DriverClient(live.url, token("driver", unique("d"))) as driver:
        await driver.gps(spot[0] + 0.001, spot[1])
        order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        job = await take_job(driver)
        withdrawn = await driver.next("job_withdrawn", timeout_s=DEADLINE_S + LIVE_PARAMS.cell.heartbeat_ttl_s)
        assert (withdrawn["job_id"], withdrawn["reason"]) == (job["job_id"], "driver_lost")
        async with streaming_gps(driver, lambda: (spot[0] + 0.001, spot[1])):
            offer = await driver.next("offer", timeout_s=DEADLINE_S)
            assert [o["order_id"] for o in offer["orders"]] == [order["id"]]


async def test_status_events_carry_both_tracks_and_resubscribing_sends_no_duplicate(live, spot):
    """Items 7 and 8: ``start_preparing`` after assignment shows in ``kitchen_status``; subscribing again sends
    nothing twice; times are unix seconds on the socket and over HTTP, and HTTP names the event ``event``."""
    owner, rest, [item] = await setup_restaurant(live, spot)
    customer_id = unique("c")
    api = ApiClient(live.url, token("customer", customer_id))
    async with DriverClient(live.url, token("driver", unique("d"))) as driver, \
            streaming_gps(driver, lambda: (spot[0] + 0.001, spot[1])), \
            CustomerClient(live.url, token("customer", customer_id)) as customer:
        order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        await customer.follow(order["id"])
        await take_job(driver)
        await owner.kitchen(order["id"], "accept")
        await owner.kitchen(order["id"], "start-preparing")
        await customer.wait_for(lambda c: len(c.statuses(order["id"])) >= 4, timeout_s=DEADLINE_S)
        preparing = lifecycle(customer.events[order["id"]])[3]
        assert (preparing["event"], preparing["status"]) == ("start_preparing", "driver_assigned")
        assert (preparing["kitchen_status"], preparing["courier_status"]) == ("preparing", "assigned")
        assert isinstance(preparing["at"], float) and abs(preparing["at"] - time.time()) < 600
    async with connect(ws_url(live.url, "/v1/ws/customer", token("customer", customer_id))) as socket:
        frames = []
        for attempt in ("s1", "s2"):
            await socket.send(wire.encode(wire.Subscribe(order_id=order["id"], id=attempt)))
        await socket.send(wire.encode(wire.Ping(id="done")))
        while not frames or frames[-1]["type"] != "pong":
            frames.append(await recv(socket))
        statuses = [f for f in frames if f["type"] == "status"]
        assert gapless(statuses) and len(lifecycle(statuses)) == 4
        assert [f["re"] for f in frames if f["type"] == "subscribed"] == ["s1", "s2"]
    events = await api.events(order["id"])
    assert [e["event"] for e in lifecycle(events)] == ["placed", "assign", "accept", "start_preparing"]
    assert all(isinstance(e["at"], float) for e in events) and lifecycle(events)[3]["kitchen_status"] == "preparing"
