"""Cells across a two-node Ray cluster on this machine: spread over both, moved when a node is lost.

The cluster is started the way an operator would (``ray start --head`` on a
free port, then ``ray start --address`` on the "second machine"), both nodes
offering the ``cell_host`` resource; a ``hexdispatch serve`` process joins it
with ``RAY_ADDRESS``. Losing the second node (its processes killed) must
bring its cells back on the head node, rebuilt from Postgres, and every
acknowledged order must still be delivered exactly once.
"""

import asyncio
import uuid

import httpx
import pytest

from actors.cell import cell_of_point
from bench.chaos_env import RAY_ENV, RayNode
from clients.driver import DriverClient
from clients.http import ApiClient
from tests.conftest import token
from tests.environment import child_environment
from tests.waiting import DEADLINE_S, START_DEADLINE_S, eventually
from tests.live.conftest import ServerProcess, free_port
from tests.live.test_end_to_end import run_driver, setup_restaurant


@pytest.fixture(scope="module")
async def cluster(settings, tmp_path_factory):
    """A two-node Ray cluster and a front door joined to it."""
    logs = tmp_path_factory.mktemp("ray-nodes")
    port = free_port()
    env = child_environment(**RAY_ENV)
    head = RayNode(logs / "head.log", "--head", f"--port={port}", "--include-dashboard=false",
                   f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
                   f"--metrics-export-port={free_port()}", env=env)
    nodes = [head]
    server = None
    try:
        # The second node joins through the head's GCS: only once the head is up.
        await eventually(head.started, timeout_s=START_DEADLINE_S, interval_s=0.5, what="the head node")
        second = RayNode(logs / "second.log", f"--address=127.0.0.1:{port}", f"--metrics-export-port={free_port()}",
                         env=env)
        nodes.append(second)
        server = ServerProcess(settings, tmp_path_factory.mktemp("server"),
                               env={"RAY_ADDRESS": f"127.0.0.1:{port}", **RAY_ENV})
        await asyncio.to_thread(server.wait_healthy, START_DEADLINE_S)
        await cell_hosts(server, count=2)
        yield server, head, second
    finally:
        if server is not None:
            server.stop()
        for node in reversed(nodes):
            node.stop()


ADMIN = {"authorization": f"Bearer {token('admin', 'ops')}"}


async def admin_cells(server) -> dict:
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        reply = await client.get(f"{server.url}/v1/admin/cells", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    return reply.json()


async def cell_hosts(server, count: int) -> list[dict]:
    """The live nodes offering ``cell_host``, once there are ``count`` of them (Ray notices a lost node
    only after its health checks fail: tens of seconds, more on a loaded machine)."""

    async def hosts():
        found = [n for n in (await admin_cells(server))["nodes"] if n["alive"] and n["cell_host"] > 0]
        return found if len(found) == count else None

    return await eventually(hosts, timeout_s=START_DEADLINE_S, interval_s=1.0, what=f"{count} cell hosts")


async def cells_by_node(server, wanted: set[str], on: set[str] | None = None) -> dict[str, str]:
    """``{cell: node_id}`` once every wanted cell reports its load (from one of the nodes ``on``, if given)."""

    async def placement():
        found = {c["cell"]: c["node_id"] for c in (await admin_cells(server))["cells"] if c["cell"] in wanted}
        return found if set(found) == wanted and (on is None or set(found.values()) <= on) else None

    return await eventually(placement, timeout_s=START_DEADLINE_S, interval_s=1.0,
                            what=f"cells {sorted(wanted)} reporting (from {on})")


async def deliver(server, spot, rest_order) -> list[int]:
    """A driver at ``spot`` takes and delivers whatever it is offered until ``rest_order`` is delivered."""
    deliveries: list[int] = []
    async with DriverClient(server.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
        await driver.gps(spot[0] + 0.001, spot[1])
        worker = asyncio.get_running_loop().create_task(run_driver(driver, (spot[0] + 0.001, spot[1]), deliveries))

        def delivered() -> bool:
            if worker.done():
                worker.result()  # the driver failed: say why
            return rest_order in deliveries

        try:
            await eventually(delivered, timeout_s=START_DEADLINE_S, what=f"order {rest_order} delivered")
        finally:
            worker.cancel()
    return deliveries


async def test_cells_spread_over_nodes_and_survive_losing_one(cluster, pool):
    server, head, second = cluster
    spots = [(-30.0 + 9.0 * i, 20.0 + 7.0 * i) for i in range(6)]  # far apart: one cell each
    orders, cells = [], []
    for spot in spots:
        owner, rest, [item] = await setup_restaurant(server, spot)
        customer = ApiClient(server.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
        orders.append(await customer.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1])))
        cells.append(cell_of_point(*spot))
    placement = await cells_by_node(server, set(cells))
    nodes = set(placement.values())
    assert len(nodes) == 2, f"cells did not spread: {placement}"

    # Dispatch works on both nodes: deliver one order in a cell of each.
    first_of_node = {node: next(i for i, c in enumerate(cells) if placement[c] == node) for node in nodes}
    for i in first_of_node.values():
        assert orders[i]["id"] in await deliver(server, spots[i], orders[i]["id"])

    # Lose the second node while the other orders wait, acknowledged, for drivers.
    second.lose()
    remaining = [i for i in range(len(spots)) if i not in first_of_node.values()]
    survivors = {n["node_id"] for n in await cell_hosts(server, count=1)}
    await cells_by_node(server, set(cells), on=survivors)  # all back, on the head node
    lost_node = (nodes - survivors).pop()
    moved = [i for i in remaining if placement[cells[i]] == lost_node]
    assert moved, "no waiting order was in a cell of the lost node"
    for i in remaining:
        assert orders[i]["id"] in await deliver(server, spots[i], orders[i]["id"])

    ids = [o["id"] for o in orders]
    rows = await pool.fetch(
        "SELECT order_id, count(*) FILTER (WHERE type = 'deliver') AS delivered FROM order_events"
        " WHERE order_id = ANY($1::bigint[]) GROUP BY order_id", ids)
    assert sorted(r["order_id"] for r in rows) == sorted(ids)
    assert all(r["delivered"] == 1 for r in rows), "every acknowledged order delivered exactly once"
