"""Cells have a lifecycle: opened only in the service area and under the cap, never for a jump, retired when idle.

Real server, real Ray actors: a cell's actor is a process, so every refusal is
checked against Ray's own list of cell actors.
"""

import asyncio
import json
import time
import uuid
from dataclasses import replace

import h3.api.basic_int as h3
import httpx
import psutil
import pytest
import ray

from actors.cell import NAMESPACE, actor_name, cell_names, cell_of_point
from clients.driver import DriverClient
from clients.http import ApiClient, ApiError
from dispatch.service_area import Region
from tests.conftest import token
from tests.live.conftest import LIVE_PARAMS, LiveServer
from tests.live.test_end_to_end import setup_restaurant
from tests.waiting import DEADLINE_S, eventually

#: A driver account used from four distant cities (the issue's case); none of them has a restaurant.
CITIES = [(40.7128, -74.0060), (35.6762, 139.6503), (-33.8688, 151.2093), (51.5074, -0.1278)]
ADMIN = {"authorization": f"Bearer {token('admin', 'ops')}"}


async def live_cells() -> set[str]:
    return set(await asyncio.to_thread(cell_names))


async def quiet_reply(driver: DriverClient) -> dict:
    """Ping and wait for the pong; the first error before it (answering a frame sent before the ping), else the pong."""
    await driver.link.send({"type": "ping"})
    first = None
    while (reply := await driver.next("pong", "error", timeout_s=15))["type"] != "pong":
        first = first or reply
    return first or reply


async def admin_stats(server) -> dict:
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        reply = await client.get(f"{server.url}/v1/admin/stats", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    return reply.json()


async def started(settings, params) -> LiveServer:
    server = LiveServer(settings.with_(use_ray=True, migrate_on_start=False, gateway=params))
    await server.start()
    return server


async def kill_every_cell() -> None:
    """Start from a deployment without cells (the test then knows what the cap counts). Cells of earlier tests
    may be re-opened once by calls still retrying when they are killed: kill until none comes back."""
    deadline = time.monotonic() + 60
    while cells := await live_cells():
        assert time.monotonic() < deadline, f"cells keep coming back: {cells}"
        for cell_id in cells:
            try:
                ray.kill(ray.get_actor(actor_name(cell_id), namespace=NAMESPACE), no_restart=True)
            except ValueError:
                continue
        await asyncio.sleep(1.0)


def actor_rss_mb(pids) -> list[float]:
    return [psutil.Process(pid).memory_info().rss / 2**20 for pid in pids]


async def test_fixes_outside_the_service_area_are_refused_and_open_no_cell(live, spot, served, ray_local):
    gateway = live.app.state.gateway
    before_cells = await live_cells()
    refused = gateway.stats["refused_outside_service_area"]
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
        await driver.next("welcome")
        for city in CITIES:
            await driver.gps(*city)
            reply = await quiet_reply(driver)
            assert (reply["type"], reply.get("code")) == ("error", "outside_service_area"), reply
        await driver.gps(*spot)  # at the restaurant: served
        assert (await quiet_reply(driver))["type"] == "pong"
        await eventually(lambda: cell_of_point(*spot) in gateway.cells, 30, what="the served cell opened")
    city_cells = {cell_of_point(*city) for city in CITIES}
    after_cells = await live_cells()
    assert city_cells.isdisjoint(after_cells) and city_cells.isdisjoint(gateway.cells)
    assert after_cells - before_cells <= {cell_of_point(*spot)}
    assert gateway.stats["refused_outside_service_area"] - refused == len(CITIES)
    assert (await admin_stats(live))["refused_outside_service_area"] >= len(CITIES)

    # What the issue cost: a cell actor is a process; the four cities now cost none.
    async def answering_pids() -> list[int]:  # a loaded cell may miss one admin view's deadline
        async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
            reply = await client.get(f"{live.url}/v1/admin/cells", headers=ADMIN)
        return [c["pid"] for c in reply.json()["cells"]]

    pids = await eventually(answering_pids, DEADLINE_S, what="a cell answering the admin view")
    rss = actor_rss_mb(pids)
    print(f"\ncell actors: {len(pids)}, RSS per actor {min(rss):.0f}-{max(rss):.0f} MB (mean {sum(rss) / len(rss):.0f});"
          f" actors opened for the four cities: {len(city_cells & after_cells)} (before the service area: 4,"
          f" {4 * sum(rss) / len(rss):.0f} MB)")


async def test_implausible_jump_is_refused_on_both_paths_and_changes_nothing(live, spot, served):
    far = (spot[0], spot[1] + 5.0)  # about 500 km east, a second later
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
        await driver.next("welcome")
        await driver.gps(*spot)
        assert (await quiet_reply(driver))["type"] == "pong"
        await driver.gps(*far)  # msgpack: offered to the fast path first
        reply = await quiet_reply(driver)
        assert (reply["type"], reply.get("code")) == ("error", "implausible_jump"), reply
        await driver.link.send_raw(json.dumps({"type": "gps", "lat": far[0], "lng": far[1]}))  # JSON: the full path
        reply = await driver.next("error", timeout_s=15)  # answered in the connection's encoding (msgpack)
        assert reply["code"] == "implausible_jump" and "m from the last one" in reply["message"]
        await driver.gps(spot[0] + 0.001, spot[1])  # still judged from the last fix taken: plausible
        assert (await quiet_reply(driver))["type"] == "pong"
    assert cell_of_point(*far) not in await live_cells()
    assert live.app.state.gateway.stats["refused_implausible_jump"] >= 2


async def test_orders_and_fixes_outside_a_configured_area_are_refused(settings, ray_local, spot, pool):
    inside, outside = spot, (spot[0], spot[1] + 3.0)
    region = Region.parse(cell_of_point(*inside))
    server = await started(settings, replace(LIVE_PARAMS, service_area=region))
    try:
        _, kept, [kept_item] = await setup_restaurant(server, inside)
        _, far, [far_item] = await setup_restaurant(server, outside)
        customer = ApiClient(server.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
        with pytest.raises(ApiError) as refused:
            await customer.place_order(far["id"], [{"item_id": far_item["id"]}], (outside[0] + 0.01, outside[1]))
        assert (refused.value.status, refused.value.code) == (422, "outside_service_area")
        placed = await customer.place_order(kept["id"], [{"item_id": kept_item["id"]}], (inside[0] + 0.01, inside[1]))
        assert placed["status"] == "placed"
        rows = await pool.fetch("SELECT restaurant_id FROM orders WHERE restaurant_id = ANY($1::bigint[])",
                                [kept["id"], far["id"]])
        assert [r["restaurant_id"] for r in rows] == [kept["id"]], "the refused order was placed"
        async with DriverClient(server.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
            await driver.gps(*outside)
            reply = await quiet_reply(driver)
            assert (reply["type"], reply.get("code")) == ("error", "outside_service_area")
        assert cell_of_point(*outside) not in await live_cells()
    finally:
        await server.stop()


async def test_the_cell_cap_refuses_new_cells_for_fixes_and_orders(settings, ray_local, spot, pool):
    await kill_every_cell()
    server = await started(settings, replace(LIVE_PARAMS, max_cells=1))
    try:
        places = [spot, (spot[0], spot[1] + 3.0), (spot[0], spot[1] + 6.0)]
        restaurants = [await setup_restaurant(server, place) for place in places]
        async with DriverClient(server.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as first, \
                DriverClient(server.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as second:
            await first.gps(*places[0])
            reply = await quiet_reply(first)
            assert reply["type"] == "pong", (reply, server.app.state.gateway.census, list(server.app.state.gateway.cells))
            await second.gps(*places[1])
            reply = await quiet_reply(second)
            assert (reply["type"], reply.get("code")) == ("error", "cell_capacity"), reply
            assert "maximum of 1 cells" in reply["message"]
            customer = ApiClient(server.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
            _, rest, [item] = restaurants[2]
            with pytest.raises(ApiError) as refused:
                await customer.place_order(rest["id"], [{"item_id": item["id"]}], places[2])
            assert (refused.value.status, refused.value.code) == (503, "cell_capacity")
            _, rest, [item] = restaurants[0]  # the open cell still takes orders
            assert (await customer.place_order(rest["id"], [{"item_id": item["id"]}], places[0]))["status"] == "placed"
        assert await live_cells() == {cell_of_point(*places[0])}
        stats = await admin_stats(server)
        assert stats["max_cells"] == 1 and stats["cells_in_deployment"] == 1
        assert stats["refused_cell_capacity"] == 2
    finally:
        await server.stop()


async def test_an_idle_cell_retires_and_reopens_with_nothing_lost(settings, ray_local, spot, pool):
    params = replace(LIVE_PARAMS, cell=replace(LIVE_PARAMS.cell, idle_retire_s=1.0, heartbeat_ttl_s=1.0))
    server = await started(settings, params)
    gateway = server.app.state.gateway
    cell_id = cell_of_point(*spot)
    try:
        _, rest, [item] = await setup_restaurant(server, spot)
        async with DriverClient(server.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
            await driver.gps(*spot)
            assert (await quiet_reply(driver))["type"] == "pong"
            await eventually(lambda: cell_id in gateway.cells, 30, what="the cell opened")
            stale = gateway.cells[cell_id]
            pid = (await stale.load.remote())["pid"]
        # The driver went away: once its heartbeat ran out and the cell stayed empty, the actor exits.
        await eventually(_gone(cell_id), 60, what="the idle cell retired")
        await eventually(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                         60, what="the actor's process exited")
        await eventually(lambda: cell_id not in gateway.cells, 30, what="the directory forgot the cell")
        assert gateway.stats["cells_retired"] >= 1

        # A front door that has not heard of the retirement yet still routes to the old actor: an order placed
        # through it must still land in a live actor (the new one rebuilds from Postgres and takes the call).
        gateway.cells[cell_id] = stale
        customer = ApiClient(server.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
        order = await customer.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        async with DriverClient(server.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
            offer = None
            deadline = time.monotonic() + 60
            while offer is None and time.monotonic() < deadline:
                await driver.gps(*spot)  # the next fix: the driver is in the (re-opened) cell
                try:
                    offer = await driver.next("offer", timeout_s=0.5)
                except asyncio.TimeoutError:
                    continue
            assert offer is not None, "the order placed into the retired cell was never offered"
            assert [o["order_id"] for o in offer["orders"]] == [order["id"]]
        assert gateway.cells[cell_id] is not stale and cell_id in await live_cells()
    finally:
        await server.stop()


def _gone(cell_id: str):
    async def check() -> bool:
        return cell_id not in await live_cells()
    return check


async def test_an_idle_cell_does_not_retire_while_postgres_holds_an_order_it_missed(settings, ray_local, spot,
                                                                                      as_role):
    """An order committed in Postgres whose ``add_order`` never reached the cell (here: the API runs without live
    dispatch): the cell, empty in memory, is about to retire. It asks Postgres first, takes the order in, and
    stays, rather than leaving the order without a cell until its periodic sweep (an hour away here) or a fix."""
    from actors.cell import cell_actor_class
    from dispatch.cell import CellParams
    from tests.server.helpers import add_item, make_restaurant, place

    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner, latitude=spot[0], longitude=spot[1])
    item = await add_item(owner, rest["id"])
    cell_id = cell_of_point(*spot)
    cell = cell_actor_class().remote(cell_id, settings.database_url, CellParams(idle_retire_s=1.0), 0.05, 3600.0)
    # A driver keeps the cell from retiring until the order is in Postgres; then it leaves.
    await cell.push_gps.remote("gw-test", [("d-leaving", spot[0], spot[1], None, None, 1, None)])
    placed = await place(customer, rest["id"], [{"item_id": item["id"]}], dropoff=(spot[0] + 0.005, spot[1]))
    assert placed.status_code == 201, placed.text
    assert (await cell.load.remote())["pending_orders"] == 0  # memory missed it
    assert await cell.remove_driver.remote("d-leaving")

    async def holds_the_order():
        return (await cell.load.remote())["pending_orders"] == 1  # raises if the actor retired and exited
    await eventually(holds_the_order, 60, what="the cell took in the order Postgres holds")
    ray.kill(cell, no_restart=True)
