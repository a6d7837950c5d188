"""Cell load reaches operators: Ray's metrics endpoint (the dashboard's source) and the admin API."""

import asyncio
import re
import urllib.request
import uuid

import httpx

from actors.cell import cell_of_point
from actors.metrics import METRICS
from clients.driver import DriverClient
from clients.http import ApiClient
from tests.conftest import token
from tests.live.test_end_to_end import setup_restaurant
from tests.waiting import DEADLINE_S, START_DEADLINE_S, eventually


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE_S) as reply:
        return reply.read().decode()


def samples(text: str, name: str, cell: str) -> list[tuple[str, float]]:
    """(labels, value) of every sample of ``ray_<name>`` tagged with ``cell``."""
    pattern = re.compile(rf'^ray_{name}\{{(?P<labels>[^}}]*)\}} (?P<value>\S+)$', re.M)
    return [(m["labels"], float(m["value"])) for m in pattern.finditer(text) if f'cell="{cell}"' in m["labels"]]


async def test_cell_figures_are_exported_to_ray_metrics_and_the_admin_api(live, spot, ray_local):
    owner, rest, [item] = await setup_restaurant(live, spot)
    cell = cell_of_point(*spot, live.app.state.settings.gateway.cell_res)
    customer = ApiClient(live.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
    order = await customer.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
    # One driver declines the order: the cell then holds one driver, one pending order and one offer made.
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
        await driver.gps(spot[0] + 0.001, spot[1])
        offer = await driver.next("offer", timeout_s=START_DEADLINE_S)  # behind the cell's actor starting
        await driver.decline(offer["offer_id"])

        async def cell_load(fixes: int):
            """The cell's figures once it has applied ``fixes`` fixes (the admin API reads the actor)."""
            async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
                reply = await client.get(f"{live.url}/v1/admin/cells",
                                         headers={"authorization": f"Bearer {token('admin', 'ops')}"})
            assert reply.status_code == 200, reply.text
            mine = [c for c in reply.json()["cells"] if c["cell"] == cell]
            return mine[0] if mine and mine[0]["gps_fixes"] >= fixes else None

        # The front door sends a driver's latest fix only, once per flush: each fix is sent once the
        # cell has applied the one before, so that all seven reach it.
        for fixes in range(1, 7):
            await eventually(lambda: cell_load(fixes), what=f"{fixes} fixes applied")
            await driver.gps(spot[0] + 0.001, spot[1])
        load = await eventually(lambda: cell_load(7), what="7 fixes applied")
        assert load["node_id"] and load["offers"] >= 1 and load["ticks"] > 0
        assert load["gps_lag_ms"]["p99"] >= load["gps_lag_ms"]["p50"] >= 0
        assert sum(load["drivers"].values()) == 1

        port = ray_local.nodes()[0]["MetricsExportPort"]

        async def exported_metrics():
            """Every metric's samples of this cell, once all are there (the node's agent publishes every few s)."""
            text = await asyncio.to_thread(scrape, port)
            exported = {name: samples(text, name, cell) for name in METRICS}
            return exported if all(exported.values()) else None

        # Behind another process: the node's metrics agent.
        exported = await eventually(exported_metrics, timeout_s=START_DEADLINE_S, interval_s=1.0)
    drivers = {re.search(r'status="(\w+)"', labels)[1]: value for labels, value in exported["hexdispatch_cell_drivers"]}
    assert sum(drivers.values()) == 1.0
    assert exported["hexdispatch_cell_gps_per_s"][0][1] >= 0.0
    await customer.cancel(order["id"])
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        denied = await client.get(f"{live.url}/v1/admin/cells", headers={"authorization": f"Bearer {token('customer', 'c')}"})
    assert denied.status_code == 403 and denied.json()["error"]["code"]
