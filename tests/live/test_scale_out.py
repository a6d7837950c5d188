"""Several front-door processes over Redis: one Postgres, one Ray, sockets on different processes."""

import asyncio
import uuid

import httpx
import msgpack
import pytest
import websockets

from clients.customer import CustomerClient
from clients.driver import DriverClient
from clients.http import ApiClient
from tests.conftest import token
from tests.events import gapless
from tests.live.conftest import ServerProcess, redis_url, session_ray_env
from tests.live.test_end_to_end import EXPECTED, setup_restaurant
from tests.waiting import DEADLINE_S, START_DEADLINE_S


@pytest.fixture(scope="module")
async def front_doors(settings, ray_local, tmp_path_factory):
    """Two separately started ``hexdispatch serve`` processes sharing Postgres, Ray and Redis."""
    env = {"REDIS_URL": redis_url(), **session_ray_env(ray_local)}
    servers = [ServerProcess(settings, tmp_path_factory.mktemp(f"door{i}"), env=env) for i in range(2)]
    try:
        await asyncio.gather(*(asyncio.to_thread(server.wait_healthy) for server in servers))
        yield servers
    finally:
        for server in servers:
            server.stop()


async def process_of(server, client: httpx.AsyncClient) -> int:
    reply = await client.get(f"{server.url}/v1/admin/stats", headers={"authorization": f"Bearer {token('admin', 'ops')}"})
    assert reply.status_code == 200, reply.text
    return reply.json()["pid"]


async def test_customer_on_one_process_follows_a_driver_on_the_other(front_doors, spot, pool):
    door_a, door_b = front_doors
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        assert await process_of(door_a, client) != await process_of(door_b, client)
    owner, rest, [item] = await setup_restaurant(door_a, spot)
    customer_id = f"c-{uuid.uuid4().hex[:8]}"
    api = ApiClient(door_a.url, token("customer", customer_id))
    near = (spot[0] + 0.002, spot[1])
    driver_id = f"d-{uuid.uuid4().hex[:8]}"
    async with DriverClient(door_b.url, token("driver", driver_id)) as driver:
        await driver.next("welcome", timeout_s=DEADLINE_S)
        await driver.gps(*near)
        order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        dropoff = (spot[0] + 0.01, spot[1])
        async with CustomerClient(door_a.url, token("customer", customer_id)) as on_a:
            await on_a.follow(order["id"])
            offer = await driver.next("offer", timeout_s=START_DEADLINE_S)  # behind the cell's actor starting
            await driver.accept(offer["offer_id"])
            job = await driver.next("assigned", timeout_s=DEADLINE_S)
            await on_a.wait_for(lambda c: "driver_assigned" in c.statuses(order["id"]), timeout_s=DEADLINE_S)
            for step in range(4):  # the driver moves; its positions cross from B to A through Redis
                await driver.gps(near[0] + 0.0005 * step, near[1])
                await asyncio.sleep(1.1)
            await on_a.wait_for(lambda c: c.positions[order["id"]], timeout_s=DEADLINE_S)
            positions = list(on_a.positions[order["id"]])
            seen = dict(on_a.last_seq)
            events = list(on_a.events[order["id"]])
        # The customer's socket drops; while it is away the order moves on.
        await driver.at_restaurant(job["job_id"])
        assert (await driver.next("ack", "error", timeout_s=DEADLINE_S))["type"] == "ack"
        await driver.picked_up(job["job_id"])
        assert (await driver.next("ack", "error", timeout_s=DEADLINE_S))["type"] == "ack"
        # It reconnects, and the load balancer sends it to the other process: it resumes from its last seq.
        async with CustomerClient(door_b.url, token("customer", customer_id)) as on_b:
            on_b.last_seq.update(seen)
            on_b.events[order["id"]].extend(events)
            await on_b.follow(order["id"])
            for step in range(1, 5):  # drives to the drop-off: no fix further than a vehicle goes
                await driver.gps(near[0] + (dropoff[0] - near[0]) * step / 4, dropoff[1])
            await driver.delivered(order["id"])
            assert (await driver.next("ack", "error", timeout_s=DEADLINE_S))["type"] == "ack"
            await on_b.wait_for(lambda c: c.statuses(order["id"])[-1:] == ["delivered"], timeout_s=DEADLINE_S)
    assert positions and all(p["driver_id"] == driver_id for p in positions)
    assert on_b.statuses(order["id"]) == EXPECTED
    assert gapless(on_b.events[order["id"]]), "a status event was missed"
    rows = await pool.fetch("SELECT seq FROM order_events WHERE order_id = $1 ORDER BY seq", order["id"])
    assert [r["seq"] for r in rows] == [e["seq"] for e in on_b.events[order["id"]]]


async def test_a_driver_has_one_live_socket_across_processes(front_doors):
    door_a, door_b = front_doors
    url = "ws{}/v1/ws/driver?token={}"
    driver_token = token("driver", f"d-{uuid.uuid4().hex[:8]}")
    async with websockets.connect(url.format(door_a.url[4:], driver_token)) as first:
        # The session starts when the server says welcome (the socket is accepted a moment before).
        assert msgpack.unpackb(await asyncio.wait_for(first.recv(), DEADLINE_S))["type"] == "welcome"
        async with websockets.connect(url.format(door_b.url[4:], driver_token)) as second:
            assert msgpack.unpackb(await asyncio.wait_for(second.recv(), DEADLINE_S))["type"] == "welcome"
            await asyncio.wait_for(first.wait_closed(), DEADLINE_S)
            assert first.close_code == 4000  # replaced by the newer connection on the other process
            assert second.close_code is None


async def test_rate_limits_hold_across_processes(front_doors, settings):
    door_a, door_b = front_doors
    limit = settings.rate_limits.order_placement
    headers = {"authorization": f"Bearer {token('customer', f'c-{uuid.uuid4().hex[:8]}')}",
               "idempotency-key": "k", "content-type": "application/json"}
    attempts = int(limit.burst) * 2
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        started = asyncio.get_running_loop().time()
        replies = await asyncio.gather(*(
            client.post(f"{(door_a, door_b)[i % 2].url}/v1/orders", content=b"{}", headers=headers)
            for i in range(attempts)))
        elapsed = asyncio.get_running_loop().time() - started
    refused = [r for r in replies if r.status_code == 429]
    admitted = attempts - len(refused)
    # Each process alone would admit a whole burst; together they admit one burst (plus the refill).
    assert admitted <= limit.burst + limit.rate * elapsed + 1, (admitted, elapsed)
    assert all(r.json()["error"]["code"] == "rate_limited" for r in refused)
    assert all(r.status_code in (400, 422) for r in replies if r.status_code != 429)


async def test_workers_share_one_port(settings, ray_local, tmp_path):
    server = ServerProcess(settings, tmp_path, "--workers", "2",
                           env={"REDIS_URL": redis_url(), **session_ray_env(ray_local)})
    try:
        await asyncio.to_thread(server.wait_healthy)
        pids = set()
        for _ in range(200):
            async with httpx.AsyncClient(timeout=DEADLINE_S) as fresh:  # a new connection each time: any worker may take it
                pids.add(await process_of(server, fresh))
            if len(pids) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(pids) == 2, "only one worker answered"
    finally:
        server.stop()
    assert server.process.returncode == 0
