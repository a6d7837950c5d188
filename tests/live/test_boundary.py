"""Orders on both sides of a cell edge compete for the same drivers: never a double assignment."""

import asyncio
import uuid

import h3.api.basic_int as h3
import httpx

from actors.cell import DEFAULT_CELL_RES, cell_of_point
from clients.driver import DriverClient
from clients.http import ApiClient
from tests.conftest import token
from tests.live.conftest import streaming_gps
from tests.waiting import DEADLINE_S, START_DEADLINE_S, eventually


def edge_points(spot, inset_m=400.0):
    """Two points ``inset_m`` from the midpoint of an edge, one inside each of the two cells."""
    a = h3.latlng_to_cell(spot[0], spot[1], DEFAULT_CELL_RES)
    b = h3.grid_ring(a, 1)[0]
    (lat1, lng1), (lat2, lng2) = h3.directed_edge_to_boundary(h3.cells_to_directed_edge(a, b))
    mid = ((lat1 + lat2) / 2, (lng1 + lng2) / 2)

    def toward(cell):
        clat, clng = h3.cell_to_latlng(cell)
        d = ((clat - mid[0]) ** 2 + (clng - mid[1]) ** 2) ** 0.5
        step = inset_m / 111_000 / d
        return (mid[0] + (clat - mid[0]) * step, mid[1] + (clng - mid[1]) * step)

    pa, pb = toward(a), toward(b)
    # Ownership goes by the fine cell's ancestor, which may differ near an edge: check it.
    assert cell_of_point(*pa) == h3.int_to_str(a) and cell_of_point(*pb) == h3.int_to_str(b)
    return pa, pb


#: How long the test keeps watching for a second assignment after the expected ones (a double assignment
#: cannot be waited for; it can only be given time to show).
AFTERWARDS_S = 2.0


async def accept_everything(driver: DriverClient, position, jobs: list):
    """Stream GPS at ``position``, accept every offer, record every job."""
    async with streaming_gps(driver, lambda: position):
        while True:
            message = await driver.next("offer", "assigned", timeout_s=3600)
            if message["type"] == "offer":
                await driver.accept(message["offer_id"])
            else:
                jobs.append(message)


async def cell_holds(live, cell: str, drivers: int) -> bool:
    """Whether ``cell`` reports holding ``drivers`` drivers (the admin API reads each cell actor)."""
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        reply = await client.get(f"{live.url}/v1/admin/cells", headers={"authorization": f"Bearer {token('admin', 'ops')}"})
    return any(c["cell"] == cell and sum(c["drivers"].values()) == drivers for c in reply.json()["cells"])


async def test_no_double_assignment_across_a_cell_edge(live, spot, pool):
    in_a, in_b = edge_points(spot)
    owner = ApiClient(live.url, token("restaurant", f"r-{uuid.uuid4().hex[:8]}"))
    rest_a = await owner.create_restaurant(name="A side", address="x", latitude=in_a[0], longitude=in_a[1], prep_minutes=1)
    rest_b = await owner.create_restaurant(name="B side", address="x", latitude=in_b[0], longitude=in_b[1], prep_minutes=1)
    item_a = await owner.add_item(rest_a["id"], "a", 500)
    item_b = await owner.add_item(rest_b["id"], "b", 500)
    drivers = [DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) for _ in range(3)]
    jobs: list[dict] = []
    workers = []
    try:
        for i, driver in enumerate(drivers):
            await driver.__aenter__()
            position = (in_a[0] + 0.0003 * i, in_a[1])
            workers.append(asyncio.get_running_loop().create_task(accept_everything(driver, position, jobs)))
        await eventually(lambda: cell_holds(live, cell_of_point(*in_a), 3), what="cell A holding the three drivers")
        customer = ApiClient(live.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
        placed = await asyncio.gather(*[
            customer.place_order(rest["id"], [{"item_id": item["id"]}], (in_a[0] + 0.01, in_a[1]))
            for rest, item in [(rest_a, item_a), (rest_b, item_b), (rest_a, item_a), (rest_b, item_b)]
        ])
        order_ids = [o["id"] for o in placed]
        await eventually(lambda: len(jobs) >= 3, what="three jobs")
        await asyncio.sleep(AFTERWARDS_S)  # not a wait for something to happen: see AFTERWARDS_S
    finally:
        for worker in workers:
            worker.cancel()
        for driver in drivers:
            await driver.__aexit__(None, None, None)

    rows = await pool.fetch(
        "SELECT id, restaurant_id, driver_id, job_id FROM orders WHERE id = ANY($1::bigint[])", order_ids)
    assigned = [r for r in rows if r["driver_id"] is not None]
    assert len(assigned) == 3, rows
    assert len({r["driver_id"] for r in assigned}) == 3, "a driver holds two jobs"
    assert any(r["restaurant_id"] == rest_b["id"] for r in assigned), "no neighbouring-cell driver served B"
    assigns = await pool.fetch(
        "SELECT order_id, count(*) AS n FROM order_events WHERE type = 'assign' AND order_id = ANY($1::bigint[])"
        " GROUP BY order_id", order_ids)
    assert all(r["n"] == 1 for r in assigns)
    assert len(jobs) == 3 and len({j["job_id"] for j in jobs}) == 3


async def test_borrowed_driver_completes_the_job(live, spot):
    in_a, in_b = edge_points(spot)
    owner = ApiClient(live.url, token("restaurant", f"r-{uuid.uuid4().hex[:8]}"))
    rest_b = await owner.create_restaurant(name="B side", address="x", latitude=in_b[0], longitude=in_b[1], prep_minutes=1)
    item_b = await owner.add_item(rest_b["id"], "b", 500)
    customer = ApiClient(live.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))
    here = [in_a]
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver, \
            streaming_gps(driver, lambda: here[0]):  # alive in cell A however long cell B takes to start
        await eventually(lambda: cell_holds(live, cell_of_point(*in_a), 1), what="cell A holding the driver")
        order = await customer.place_order(rest_b["id"], [{"item_id": item_b["id"]}], (in_b[0], in_b[1] + 0.005))
        offer = await driver.next("offer", timeout_s=START_DEADLINE_S)  # cell B's actor starts first
        await driver.accept(offer["offer_id"])
        job = await driver.next("assigned", timeout_s=DEADLINE_S)
        # It drives across the edge to the restaurant; cell B, which borrowed it, keeps it.
        here[0] = in_b
        await driver.gps(*in_b)
        await eventually(lambda: cell_holds(live, cell_of_point(*in_b), 1), what="cell B holding the driver")
        for step in ("at_restaurant", "picked_up"):
            await getattr(driver, step)(job["job_id"])
            reply = await driver.next("ack", "error", timeout_s=DEADLINE_S)
            assert reply["type"] == "ack", reply
        await driver.gps(in_b[0], in_b[1] + 0.005)
        await driver.delivered(order["id"])
        reply = await driver.next("ack", "error", timeout_s=DEADLINE_S)
        assert reply["type"] == "ack", reply
    assert (await customer.order(order["id"]))["status"] == "delivered"
