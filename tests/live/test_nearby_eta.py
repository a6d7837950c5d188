"""Delivery-time quotes at search on the real server: ``GET /v1/restaurants/nearby`` gives each restaurant a
``delivery_eta`` from its cell's live couriers (front door's board of the cells, ``server.gateway.eta_board``),
null where no courier is known."""

from __future__ import annotations

import time
import uuid

from clients.driver import DriverClient
from clients.http import ApiClient
from dispatch.geo import haversine_m
from tests.conftest import token
from tests.live.conftest import streaming_gps
from tests.waiting import DEADLINE_S, eventually


async def test_nearby_quotes_the_delivery_time_from_the_cells_couriers(live, spot):
    owner = ApiClient(live.url, token("restaurant", f"r-{uuid.uuid4().hex[:8]}"))
    name = f"Quoted {uuid.uuid4().hex[:8]}"
    rest = await owner.create_restaurant(name=name, address="1 Test St", latitude=spot[0], longitude=spot[1],
                                         prep_minutes=7)
    # Far away (about 110 km north): a cell with no courier and no courier around it.
    lonely = await owner.create_restaurant(name=f"Lonely {name}", address="2 Test St", latitude=spot[0] + 1.0,
                                           longitude=spot[1], prep_minutes=7)
    searcher = (spot[0] + 0.01, spot[1])  # about 1.1 km north of the restaurant
    courier = (spot[0] + 0.002, spot[1])  # about 220 m from it
    customer = ApiClient(live.url, token("customer", f"c-{uuid.uuid4().hex[:8]}"))

    async def quote(**params) -> dict | None:
        page = await customer.nearby(*searcher, radius_m=5000, **params)
        [item] = [i for i in page["items"] if i["id"] == rest["id"]]
        return item["delivery_eta"]

    assert await quote() is None, "no courier anywhere yet"
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
        await driver.next("welcome", timeout_s=DEADLINE_S)
        async with streaming_gps(driver, lambda: courier):
            asked_at = time.time()
            eta = await eventually(quote, what="a delivery_eta for the restaurant")
            # The food decides here: 7 minutes of prep (the courier is 220 m away, half a minute at 25 km/h),
            # then 1.1 km to the searcher (about 2.7 minutes), with the live calibration's range around it.
            drive = haversine_m(spot[0], spot[1], *searcher) / (25_000 / 60)
            assert eta["minutes_low"] <= eta["minutes"] <= eta["minutes_high"]
            assert abs(eta["minutes"] - (7 + drive)) <= 5, eta
            assert eta["minutes_low"] <= 7 + drive + 1 and eta["minutes_high"] >= 7 + drive - 1, eta
            assert asked_at - 30 <= eta["as_of"] <= time.time() + 1
            # The SQL route (text search) quotes with the same code.
            by_name = await eventually(lambda: quote(q=name), what="a delivery_eta on the SQL route")
            assert abs(by_name["minutes"] - eta["minutes"]) <= 1
            # The far restaurant's cell has no courier, nor have its neighbours.
            far = await customer.nearby(spot[0] + 1.0, spot[1], radius_m=2000)
            [item] = [i for i in far["items"] if i["id"] == lonely["id"]]
            assert item["delivery_eta"] is None
