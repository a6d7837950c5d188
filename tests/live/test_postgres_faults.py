"""Postgres restarts and goes away under a live server: no status event is lost, no order or driver stranded.

Each test runs the server against a private Postgres in a temporary
directory (``tests.private_postgres``), never the machine's shared one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict

import asyncpg
import httpx
import ray

from actors.cell import NAMESPACE, actor_name, cell_of_point
from clients.driver import DriverClient
from clients.http import ApiClient, ApiError
from clients.ws import Link, ws_url
from server.db import migrate
from tests.conftest import token
from tests.live.conftest import LIVE_PARAMS, LiveServer, streaming_gps
from tests.live.test_end_to_end import setup_restaurant
from tests.private_postgres import eventually, private_postgres  # noqa: F401 - the fixture
from tests.waiting import eventually as awaited_eventually


@contextlib.asynccontextmanager
async def server_on(settings, dsn: str, spot):
    """A live server on the private Postgres at ``dsn``; its cell is killed afterwards (it holds that DSN)."""
    await migrate(dsn)
    server = LiveServer(settings.with_(database_url=dsn, use_ray=True, migrate_on_start=False, gateway=LIVE_PARAMS))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(actor_name(cell_of_point(*spot)), namespace=NAMESPACE), no_restart=True)


async def fetch(dsn: str, sql: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_postgres_restart_loses_no_status_event(settings, ray_local, private_postgres, spot):
    dsn = private_postgres.dsn
    async with server_on(settings, dsn, spot) as server:
        owner, rest, [item] = await setup_restaurant(server, spot)
        customer_id = f"c-{uuid.uuid4().hex[:8]}"
        api = ApiClient(server.url, token("customer", customer_id))
        orders = [(await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1])))["id"]
                  for _ in range(3)]
        # A raw socket, so duplicates and gaps would show (the client library hides them).
        link = Link(ws_url(server.url, "/v1/ws/customer", token("customer", customer_id)))
        await link.start()
        seqs: dict[int, list[int]] = defaultdict(list)

        async def read() -> None:
            while True:
                message = await link.inbox.get()
                if message["type"] == "status":
                    seqs[message["order_id"]].append(message["seq"])

        recorded = {"before": 0, "after": 0}
        restarted = asyncio.Event()

        async def produce() -> None:
            """Kitchen estimates for every order, over and over: each one is a status event."""
            minutes = 10
            while True:
                for order_id in orders:
                    minutes = minutes % 50 + 1
                    try:
                        await owner.revise_ready(order_id, minutes)
                        recorded["after" if restarted.is_set() else "before"] += 1
                    except (ApiError, httpx.HTTPError):
                        await asyncio.sleep(0.1)  # Postgres is restarting
                await asyncio.sleep(0.02)

        reader = asyncio.get_running_loop().create_task(read())
        for order_id in orders:
            await link.send({"type": "subscribe", "order_id": order_id, "after_seq": 0})
        producer = asyncio.get_running_loop().create_task(produce())
        try:
            await eventually(lambda: recorded["before"] >= 15, what="events before the restart")
            listener = server.app.state.gateway.listener
            assert listener.connects == 1
            await asyncio.to_thread(private_postgres.restart)  # events keep coming meanwhile
            restarted.set()
            await eventually(lambda: recorded["after"] >= 15, timeout_s=120, what="events after the restart")
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        try:
            rows = await fetch(dsn, "SELECT order_id, max(seq) AS last FROM order_events"
                                    " WHERE order_id = ANY($1::bigint[]) GROUP BY order_id", orders)
            expected = {row["order_id"]: list(range(1, row["last"] + 1)) for row in rows}
            assert sum(len(s) for s in expected.values()) >= 33
            await eventually(lambda: {o: seqs[o][:len(expected[o])] for o in orders} == expected, timeout_s=60,
                             what="every status event delivered")
            await asyncio.sleep(1.0)  # time for a stray duplicate to show
            # Each seq exactly once, in order (more may have come since: the cell's new delivery estimates follow
            # the kitchen's ready estimates by a tick).
            assert all(seqs[o] == list(range(1, len(seqs[o]) + 1)) for o in orders), dict(seqs)
            assert link.connections == 1  # the socket never dropped: no resume hid anything
            assert listener.connects >= 2
        finally:
            reader.cancel()
            await link.stop()


async def test_assignment_while_postgres_is_down_is_rolled_back_then_made(settings, ray_local, private_postgres,
                                                                           spot):
    dsn = private_postgres.dsn
    async with server_on(settings, dsn, spot) as server:
        owner, rest, [item] = await setup_restaurant(server, spot)
        api = ApiClient(server.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
        async with DriverClient(server.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
            await driver.next("welcome", timeout_s=30)
            async with streaming_gps(driver, lambda: (spot[0] + 0.001, spot[1])):
                order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
                offer = await driver.next("offer", timeout_s=60)
                await asyncio.to_thread(private_postgres.stop)
                await driver.accept(offer["offer_id"])
                refused = await driver.next("ack", "error", timeout_s=60)
                assert refused["type"] == "error" and refused["code"] == "unavailable", refused
                withdrawn = await driver.next("job_withdrawn", timeout_s=60)
                assert withdrawn["reason"] == "unavailable"
                await asyncio.to_thread(private_postgres.start)

                # The order is offered again (the driver did not decline it) and, Postgres back, assigned.
                deadline = time.monotonic() + 120
                while True:
                    assert time.monotonic() < deadline, "the order was never assigned after Postgres came back"
                    offer = await driver.next("offer", timeout_s=60)
                    await driver.accept(offer["offer_id"])
                    reply = await driver.next("assigned", "error", "job_withdrawn", timeout_s=60)
                    if reply["type"] == "assigned":
                        break
                assert [o["order_id"] for o in reply["orders"]] == [order["id"]]
                assert driver.link.connections == 1  # the failed accept did not cost the driver its socket
                cell = ray.get_actor(actor_name(cell_of_point(*spot)), namespace=NAMESPACE)
                assert (await cell.load.remote())["writes_failed"] >= 1
        events = await fetch(dsn, "SELECT type, payload->>'job_id' AS job_id FROM order_events WHERE order_id = $1"
                                  " AND type <> 'estimate' ORDER BY seq", order["id"])
        assert [e["type"] for e in events] == ["placed", "assign"]  # assigned once, to this job
        assert events[1]["job_id"] == reply["job_id"]


async def test_sweep_releases_an_assignment_only_postgres_holds(live, spot, pool):
    """An assignment committed whose answer never came back: the cell told its driver nothing, so the sweep
    releases it in Postgres and the order is dispatched again, and assigned once more, for real."""
    from dispatch.lifecycle import Actor, Event
    from store.orders import apply_event

    owner, rest, [item] = await setup_restaurant(live, spot)
    api = ApiClient(live.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
    driver_id = f"d-{uuid.uuid4().hex[:8]}"
    async with DriverClient(live.url, token("driver", driver_id)) as driver:
        await driver.next("welcome", timeout_s=30)
        async with streaming_gps(driver, lambda: (spot[0] + 0.001, spot[1])):
            order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
            offer = await driver.next("offer", timeout_s=60)
            await apply_event(pool, order["id"], Event.ASSIGN, actor=Actor.SYSTEM, actor_label="system:test",
                              arguments=(driver_id, "job-lost"), payload={"driver_id": driver_id, "job_id": "job-lost"})
            await driver.accept(offer["offer_id"])
            withdrawn = await driver.next("job_withdrawn", "assigned", timeout_s=60)
            assert withdrawn["type"] == "job_withdrawn"  # Postgres refused: the order was not free
            deadline = time.monotonic() + 120
            while True:
                assert time.monotonic() < deadline, "the order was never dispatched again"
                offer = await driver.next("offer", timeout_s=60)
                await driver.accept(offer["offer_id"])
                reply = await driver.next("assigned", "job_withdrawn", timeout_s=60)
                if reply["type"] == "assigned":
                    break
    events = await pool.fetch("SELECT type, payload FROM order_events WHERE order_id = $1 AND type <> 'estimate' ORDER BY seq", order["id"])
    assert [e["type"] for e in events] == ["placed", "assign", "unassign", "assign"]
    assert events[2]["payload"]["reason"] == "assignment not confirmed"
    assert events[3]["payload"]["job_id"] == reply["job_id"] != "job-lost"


async def test_a_driver_step_sent_while_postgres_is_down_is_resent_until_recorded(settings, ray_local,
                                                                                   private_postgres, spot):
    """A driver app confirms each job step (``DriverClient.confirm``): the step answered ``unavailable`` while
    Postgres is down is sent again and recorded once it is back, not lost (the order would stay stranded)."""
    dsn = private_postgres.dsn
    async with server_on(settings, dsn, spot) as server:
        owner, rest, [item] = await setup_restaurant(server, spot)
        api = ApiClient(server.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
        async with DriverClient(server.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
            await driver.next("welcome", timeout_s=30)
            async with streaming_gps(driver, lambda: (spot[0] + 0.001, spot[1])):
                order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
                while True:  # an offer may expire before a loaded machine's accept reaches the cell
                    offer = await driver.next("offer", timeout_s=60)
                    await driver.accept(offer["offer_id"])
                    assigned = await driver.next("assigned", "error", "job_withdrawn", timeout_s=60)
                    if assigned["type"] == "assigned":
                        break
                cell = ray.get_actor(actor_name(cell_of_point(*spot)), namespace=NAMESPACE)
                failed_before = (await cell.load.remote())["writes_failed"]
                await asyncio.to_thread(private_postgres.stop)
                step = asyncio.get_running_loop().create_task(
                    driver.confirm("at_restaurant", deadline_s=240, job_id=assigned["job_id"]))

                async def refused_once() -> bool:
                    return (await cell.load.remote())["writes_failed"] > failed_before
                await awaited_eventually(refused_once, timeout_s=120, what="the step refused while Postgres is down")
                assert not step.done()
                await asyncio.to_thread(private_postgres.start)
                ack = await asyncio.wait_for(step, 240)
                assert (ack["type"], ack["of"], ack["job_id"]) == ("ack", "at_restaurant", assigned["job_id"])
                assert ack["re"] is not None  # it answers the confirmed command's id (sent again, never renewed)
        events = await fetch(dsn, "SELECT type FROM order_events WHERE order_id = $1 AND type <> 'estimate' ORDER BY seq", order["id"])
        assert [e["type"] for e in events] == ["placed", "assign", "arrive"]  # recorded once
