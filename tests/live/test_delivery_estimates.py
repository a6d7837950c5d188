"""Delivery estimates through the real server (issue 14): the promise at placement, a new estimate on the customer's
socket when a courier is assigned, the courier's arrival in the driver's offer and the kitchen's order list, and
every estimate given stored in the audit trail."""

import time
import uuid

import ray

from actors.cell import NAMESPACE, actor_name, cell_of_point
from clients.customer import CustomerClient
from clients.driver import DriverClient
from clients.http import ApiClient
from tests.conftest import token
from tests.events import gapless
from tests.live.conftest import streaming_gps
from tests.live.test_end_to_end import setup_restaurant
from tests.live.test_faults import START_DEADLINE_S
from tests.waiting import DEADLINE_S, eventually


def well_formed(estimate: dict, placed_at: float) -> None:
    assert estimate["given_at"] >= placed_at - 5
    assert estimate["dropoff_early"] <= estimate["dropoff_at"] <= estimate["dropoff_late"]
    assert estimate["dropoff_at"] > estimate["given_at"]


async def test_the_promise_is_given_at_placement_and_kept_with_the_order(live, spot):
    owner, rest, [item] = await setup_restaurant(live, spot)
    customer_id = f"c-{uuid.uuid4().hex[:8]}"
    api = ApiClient(live.url, token("customer", customer_id))
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver, \
            streaming_gps(driver, lambda: spot), \
            CustomerClient(live.url, token("customer", customer_id)) as customer:
        await driver.next("welcome", timeout_s=DEADLINE_S)

        async def driver_in_cell():  # its first fix has reached the cell (the promise then counts it)
            try:
                cell = ray.get_actor(actor_name(cell_of_point(*spot)), namespace=NAMESPACE)
            except ValueError:
                return False
            return (await cell.load.remote())["drivers"].get("idle", 0) >= 1

        await eventually(driver_in_cell, timeout_s=START_DEADLINE_S, interval_s=0.2, what="the driver in its cell")
        placed_at = time.time()
        order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (spot[0] + 0.01, spot[1]))
        promise = order["promise"]
        assert promise is not None and promise["basis"] == "queue" and order["eta"] == promise
        well_formed(promise, placed_at)
        # The courier waits at the restaurant (its cell, whatever the cell's edges), prep is 1 minute and the door
        # ~1.1 km on, at 25 km/h: well under an hour.
        assert promise["dropoff_at"] - placed_at < 3600
        assert promise["courier_arrival_at"] is not None

        await customer.follow(order["id"])
        offer = await driver.next("offer", timeout_s=START_DEADLINE_S)
        [offered] = offer["orders"]
        assert offered["courier_arrival_at"] >= placed_at - 5
        await driver.accept(offer["offer_id"])
        await driver.next("assigned", timeout_s=DEADLINE_S)
        # Once assigned, the customer's socket brings the courier's plan.
        await customer.wait_for(lambda c: (c.eta(order["id"]) or {}).get("basis") == "job", timeout_s=DEADLINE_S)
        plan = customer.eta(order["id"])
        well_formed(plan, placed_at)
        assert plan["courier_arrival_at"] is not None and plan["pickup_at"] is not None

        # The kitchen sees when the courier is expected; the order keeps its promise beside its latest estimate.
        [listed] = [o for o in (await owner.call("GET", f"/v1/restaurants/{rest['id']}/orders"))["items"]
                    if o["id"] == order["id"]]
        assert listed["eta"]["basis"] == "job" and listed["eta"]["courier_arrival_at"] is not None
        read = await api.order(order["id"])
        assert read["promise"] == promise and read["eta"]["basis"] == "job"

    # Every estimate given is in the audit trail, and every event after the first carries the one then current.
    events = await api.events(order["id"])
    assert gapless(events)
    estimates = [e for e in events if e["event"] == "estimate"]
    assert estimates[0]["payload"] == promise and estimates[0]["eta"] == promise
    assert [e["payload"]["basis"] for e in estimates][:1] == ["queue"] and "job" in [e["eta"]["basis"] for e in estimates]
    # The order was offered at once, so the promise was its only queue estimate: the tick that matched it while the
    # promise was being stored did not give it a second one.
    assert [e["payload"]["basis"] for e in estimates].count("queue") == 1
    first = events.index(estimates[0])
    assert all(e["eta"] is not None for e in events[first:])
    assert all(e["eta"] is None for e in events[:first])
    # The socket got exactly what the audit trail holds.
    socket_estimates = [e for e in customer.events[order["id"]] if e["event"] == "estimate"]
    assert [e["eta"] for e in socket_estimates] == [e["eta"] for e in estimates][:len(socket_estimates)]
