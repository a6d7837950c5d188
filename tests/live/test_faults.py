"""Faults: a cell actor dies, a driver's phone drops, the server restarts. Nothing acknowledged is lost."""

import contextlib
import os
import uuid
from types import SimpleNamespace

import ray

from actors.cell import NAMESPACE, actor_name, cell_of_point
from clients.customer import CustomerClient
from clients.driver import DriverClient
from clients.http import ApiClient
from tests.conftest import token
from tests.live.conftest import LIVE_PARAMS, LiveServer, streaming_gps
from tests.live.test_end_to_end import EXPECTED, setup_restaurant
from tests.waiting import DEADLINE_S, START_DEADLINE_S, eventually


async def process_of(actor) -> int:
    """The id of the process an actor runs in (a restarted actor runs in a new one)."""
    return await actor.__ray_call__.remote(lambda _: os.getpid())


async def take_job(driver: DriverClient, timeout_s: float = START_DEADLINE_S) -> dict:
    """The next offer, accepted; the ``assigned`` frame. The offer may wait for its cell's actor to start
    (a process compiling its kernels: a start-up deadline)."""
    offer = await driver.next("offer", timeout_s=timeout_s)
    await driver.accept(offer["offer_id"])
    return await driver.next("assigned", timeout_s=DEADLINE_S)


async def acknowledged(driver: DriverClient, send) -> dict:
    """``await send()`` until the reply is not ``unavailable`` (nothing changed, send it again: docs/protocol.md,
    as a driver app does while Postgres or a restarting cell is slow); that reply."""
    async def reply():
        await send()
        answer = await driver.next("ack", "error", timeout_s=DEADLINE_S)
        return None if answer.get("code") == "unavailable" else answer

    return await eventually(reply, timeout_s=START_DEADLINE_S, interval_s=0.5, what="a reply other than unavailable")


@contextlib.asynccontextmanager
async def assigned_order(live, spot):
    """A restaurant, a driver, a customer following one order that the driver has taken."""
    owner, rest, [item] = await setup_restaurant(live, spot)
    customer_id = f"c-{uuid.uuid4().hex[:8]}"
    api = ApiClient(live.url, token("customer", customer_id))
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver, \
            CustomerClient(live.url, token("customer", customer_id)) as customer:
        await driver.gps(spot[0] + 0.001, spot[1])
        order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        await customer.follow(order["id"])
        job = await take_job(driver)
        yield SimpleNamespace(api=api, driver=driver, customer=customer, order=order, job=job, rest=rest, item=item)


async def test_cell_actor_killed_mid_delivery(live, spot, pool):
    async with assigned_order(live, spot) as world:
        api, driver, customer, first, job = world.api, world.driver, world.customer, world.order, world.job
        rest, item = world.rest, world.item
        # A second order waits in the cell's heap when the cell dies.
        second = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        await customer.follow(second["id"])
        cell = ray.get_actor(actor_name(cell_of_point(*spot)), namespace=NAMESPACE)
        killed = await process_of(cell)
        ray.kill(cell, no_restart=False)

        async def restarted():
            return await process_of(cell) != killed

        await eventually(restarted, timeout_s=START_DEADLINE_S)
        for step in ("at_restaurant", "picked_up"):
            reply = await acknowledged(driver, lambda step=step: getattr(driver, step)(job["job_id"]))
            assert reply["type"] == "ack", reply
            await driver.gps(spot[0] + 0.001, spot[1])
        assert (await acknowledged(driver, lambda: driver.delivered(first["id"])))["type"] == "ack"
        # The rebuilt cell still dispatches the order that was waiting.
        job2 = await take_job(driver)
        assert [o["order_id"] for o in job2["orders"]] == [second["id"]]
        await customer.wait_for(lambda c: c.statuses(first["id"]) == EXPECTED, timeout_s=DEADLINE_S)
    assert (await api.order(first["id"]))["status"] == "delivered"


async def test_driver_socket_drops_mid_delivery(live, spot):
    async with assigned_order(live, spot) as world:
        driver, customer, order, job = world.driver, world.customer, world.order, world.job
        await driver.at_restaurant(job["job_id"])
        await driver.next("ack", timeout_s=DEADLINE_S)
        await driver.picked_up(job["job_id"])
        await driver.next("ack", timeout_s=DEADLINE_S)
        await driver.link.drop()
        await customer.link.drop()  # the customer's phone drops too, and resumes from its last seq
        welcome = await driver.next("welcome", timeout_s=DEADLINE_S)
        assert welcome["orders"] == [order["id"]] and driver.link.connections == 2
        await driver.gps(spot[0] + 0.01, spot[1])
        await driver.delivered(order["id"])
        assert (await driver.next("ack", "error", timeout_s=DEADLINE_S))["type"] == "ack"
        await customer.wait_for(lambda c: c.statuses(order["id"]) == EXPECTED, timeout_s=DEADLINE_S)
        assert customer.link.connections == 2


async def test_silent_driver_orders_are_redispatched(live, spot, pool):
    owner, rest, [item] = await setup_restaurant(live, spot)
    api = ApiClient(live.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as quitter:
        await quitter.gps(spot[0] + 0.001, spot[1])
        order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        await take_job(quitter)
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as rescuer, \
            streaming_gps(rescuer, lambda: (spot[0] + 0.002, spot[1])):  # alive while the quitter's heartbeat runs out
        job = await take_job(rescuer, timeout_s=START_DEADLINE_S + LIVE_PARAMS.cell.heartbeat_ttl_s)
        assert [o["order_id"] for o in job["orders"]] == [order["id"]]
    events = await pool.fetch("SELECT type, payload FROM order_events WHERE order_id = $1 AND type <> 'estimate' ORDER BY seq", order["id"])
    assert [e["type"] for e in events] == ["placed", "assign", "unassign", "assign"]
    assert events[2]["payload"]["reason"] == "driver lost"


async def test_server_restart_loses_nothing(settings, ray_local, spot, pool):
    server = LiveServer(settings.with_(use_ray=True, migrate_on_start=False, gateway=LIVE_PARAMS))
    await server.start()
    owner, rest, [item] = await setup_restaurant(server, spot)
    customer_id = f"c-{uuid.uuid4().hex[:8]}"
    driver_id = f"d-{uuid.uuid4().hex[:8]}"
    order = await ApiClient(server.url, token("customer", customer_id)).place_order(
        rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
    async with DriverClient(server.url, token("driver", driver_id)) as driver:
        await driver.gps(spot[0] + 0.001, spot[1])
        job = await take_job(driver)
    await server.stop()

    restarted = LiveServer(settings.with_(use_ray=True, migrate_on_start=False, gateway=LIVE_PARAMS))
    await restarted.start()
    try:
        async with DriverClient(restarted.url, token("driver", driver_id)) as driver, \
                CustomerClient(restarted.url, token("customer", customer_id)) as customer:
            welcome = await driver.next("welcome", timeout_s=DEADLINE_S)
            assert welcome["orders"] == [order["id"]]
            await driver.gps(spot[0] + 0.001, spot[1])
            await customer.follow(order["id"])
            for step in ("at_restaurant", "picked_up"):
                await getattr(driver, step)(job["job_id"])
                assert (await driver.next("ack", "error", timeout_s=DEADLINE_S))["type"] == "ack"
            await driver.delivered(order["id"])
            assert (await driver.next("ack", "error", timeout_s=DEADLINE_S))["type"] == "ack"
            await customer.wait_for(lambda c: c.statuses(order["id"]) == EXPECTED, timeout_s=DEADLINE_S)
    finally:
        await restarted.stop()
