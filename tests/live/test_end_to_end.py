import asyncio
import uuid

from clients.customer import CustomerClient
from clients.driver import DriverClient
from clients.http import ApiClient
from tests.conftest import token
from tests.events import gapless, lifecycle
from tests.live.conftest import streaming_gps
from tests.waiting import DEADLINE_S, START_DEADLINE_S, eventually

EXPECTED = ["placed", "driver_assigned", "at_restaurant", "picked_up", "delivered"]


async def setup_restaurant(live, spot, n_items=1):
    owner = ApiClient(live.url, token("restaurant", f"r-{uuid.uuid4().hex[:8]}"))
    rest = await owner.create_restaurant(name="Live Kitchen", address="1 Test St", latitude=spot[0],
                                         longitude=spot[1], prep_minutes=1)
    items = [await owner.add_item(rest["id"], f"Dish {i}", 900 + i) for i in range(n_items)]
    return owner, rest, items


async def run_driver(driver: DriverClient, position, deliveries: list):
    """Stream GPS, accept every offer, go through the job, deliver; record delivered order ids."""
    here = [position]
    async with streaming_gps(driver, lambda: here[0]):
        while True:
            offer = await driver.next("offer", timeout_s=3600)  # the test cancels this driver when done
            await driver.accept(offer["offer_id"])
            assigned = await driver.next("assigned", "error", timeout_s=DEADLINE_S)
            if assigned["type"] == "error":
                continue
            here[0] = position
            await driver.gps(*position)
            await driver.at_restaurant(assigned["job_id"])
            await driver.next("ack", timeout_s=DEADLINE_S)
            await driver.picked_up(assigned["job_id"])
            await driver.next("ack", timeout_s=DEADLINE_S)
            for order in assigned["orders"]:
                here[0] = (order["dropoff"]["lat"], order["dropoff"]["lng"])
                await driver.gps(*here[0])
                # One more fix after the gateway's position interval (1 s), so one surely goes to the customer.
                await asyncio.sleep(1.2)
                await driver.gps(*here[0])
                await driver.delivered(order["order_id"])
                await driver.next("ack", timeout_s=DEADLINE_S)
                deliveries.append(order["order_id"])


async def test_order_is_offered_assigned_and_delivered_with_live_status(live, spot, pool):
    owner, rest, [item] = await setup_restaurant(live, spot)
    customer_id = f"c-{uuid.uuid4().hex[:8]}"
    customer_api = ApiClient(live.url, token("customer", customer_id))
    deliveries: list[int] = []
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver, \
            CustomerClient(live.url, token("customer", customer_id)) as customer:
        assert (await driver.next("welcome", timeout_s=DEADLINE_S))["orders"] == []
        await driver.gps(spot[0] + 0.002, spot[1])
        order = await customer_api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        await customer.follow(order["id"])
        worker = asyncio.get_running_loop().create_task(run_driver(driver, (spot[0] + 0.002, spot[1]), deliveries))
        try:
            await customer.wait_for(lambda c: c.statuses(order["id"])[-1:] == ["delivered"], timeout_s=60)
            await customer.wait_for(lambda c: deliveries, timeout_s=DEADLINE_S)
        finally:
            worker.cancel()
    assert deliveries == [order["id"]]
    assert customer.statuses(order["id"]) == EXPECTED
    assert gapless(customer.events[order["id"]])
    assert customer.positions[order["id"]], "the customer never saw the driver"
    rows = await pool.fetch("SELECT type FROM order_events WHERE order_id = $1 ORDER BY seq", order["id"])
    assert [r["type"] for r in lifecycle(rows, "type")] == ["placed", "assign", "arrive", "pick_up", "deliver"]
    final = await customer_api.order(order["id"])
    assert final["status"] == "delivered" and final["delivered_at"] is not None


async def test_customer_cancellation_recalls_the_driver(live, spot):
    owner, rest, [item] = await setup_restaurant(live, spot)
    customer_id = f"c-{uuid.uuid4().hex[:8]}"
    api = ApiClient(live.url, token("customer", customer_id))
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
        await driver.gps(spot[0] + 0.001, spot[1])
        order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        offer = await driver.next("offer", timeout_s=START_DEADLINE_S)  # behind the cell's actor starting
        await driver.accept(offer["offer_id"])
        job = await driver.next("assigned", timeout_s=DEADLINE_S)
        cancelled = await api.cancel(order["id"], reason="changed my mind")
        assert cancelled["status"] == "cancelled"
        recall = await driver.next("cancelled", timeout_s=DEADLINE_S)
        assert recall["order_id"] == order["id"]
        await driver.at_restaurant(job["job_id"])
        assert (await driver.next("ack", "error", timeout_s=DEADLINE_S))["type"] == "error"  # the job is gone
        # The driver is free again: the next order is offered to it.
        second = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        offer = await driver.next("offer", timeout_s=DEADLINE_S)
        assert [o["order_id"] for o in offer["orders"]] == [second["id"]]


async def test_twenty_drivers_ten_orders_each_delivered_once(live, spot, pool):
    owner, rest, items = await setup_restaurant(live, spot, n_items=3)
    drivers = [DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) for _ in range(20)]
    deliveries: list[int] = []
    workers = []
    customers: list[tuple[CustomerClient, dict]] = []
    try:
        for i, driver in enumerate(drivers):
            await driver.__aenter__()
            position = (spot[0] + 0.002 * (i % 5), spot[1] + 0.002 * (i // 5))
            await driver.gps(*position)
            workers.append(asyncio.get_running_loop().create_task(run_driver(driver, position, deliveries)))
        for i in range(10):
            customer_id = f"c-{uuid.uuid4().hex[:8]}"
            order = await ApiClient(live.url, token("customer", customer_id)).place_order(
                rest["id"], [{"item_id": items[i % 3]["id"]}], (spot[0] + 0.01, spot[1] + 0.001 * i))
            follower = CustomerClient(live.url, token("customer", customer_id))
            await follower.__aenter__()
            await follower.follow(order["id"])
            customers.append((follower, order))
        for follower, order in customers:
            await follower.wait_for(lambda c, o=order: c.statuses(o["id"])[-1:] == ["delivered"], timeout_s=180)
        await eventually(lambda: len(deliveries) >= 10, what="ten deliveries acknowledged")
    finally:
        for worker in workers:
            worker.cancel()
        for driver in drivers:
            await driver.__aexit__(None, None, None)
        for follower, _ in customers:
            await follower.__aexit__(None, None, None)
    order_ids = sorted(order["id"] for _, order in customers)
    assert sorted(deliveries) == order_ids, "each order delivered exactly once"
    for follower, order in customers:
        assert follower.statuses(order["id"]) == EXPECTED
        assert follower.positions[order["id"]], "the customer never saw the driver"
    rows = await pool.fetch(
        "SELECT order_id, array_agg(type ORDER BY seq) AS types, array_agg(seq ORDER BY seq) AS seqs"
        " FROM order_events WHERE order_id = ANY($1::bigint[]) AND type <> 'estimate' GROUP BY order_id", order_ids)
    assert len(rows) == 10
    for row in rows:
        assert row["types"] == ["placed", "assign", "arrive", "pick_up", "deliver"]
    seqs = await pool.fetch("SELECT array_agg(seq ORDER BY seq) AS seqs FROM order_events"
                            " WHERE order_id = ANY($1::bigint[]) GROUP BY order_id", order_ids)
    assert all(row["seqs"] == list(range(1, len(row["seqs"]) + 1)) for row in seqs)
