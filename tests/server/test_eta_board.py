"""The front door's board of the cells' courier availability (server.gateway.eta_board), without Ray: which
cells it keeps, which couriers quote for a restaurant (its cell's, else its neighbours'), the quote's form, and
the same quotes on nearby's replica and SQL routes."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from types import SimpleNamespace

import h3
import numpy as np
import orjson

from actors.cell import cell_of_point
from dispatch.eta import EtaCalibration, live_calibration
from dispatch.eta_quote import CourierAvailability
from server.api import restaurants
from server.gateway import GatewayParams
from server.gateway.eta_board import EtaBoard
from tests.server.helpers import make_restaurant
from tests.waiting import eventually

LAT, LNG = 41.8781, -87.6298
NOW_S = 1_800_000_000.0
SPEED = 25_000 / 60  # metres a minute at the cells' default 25 km/h


class FakeCell:
    def __init__(self, answer):
        self.answer = answer
        self.eta_basis = SimpleNamespace(remote=self.remote)

    async def remote(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer == "slow":
            await asyncio.sleep(60)
        return self.answer


def basis(lat: float, lng: float, free_in_min: float = 0.0, load: float = 0.0) -> dict:
    now = NOW_S / 60
    return CourierAvailability(np.array([now + free_in_min]), np.array([lng]), np.array([lat]), load, now).to_lists()


def board_of(cells: dict) -> EtaBoard:
    gateway = SimpleNamespace(params=GatewayParams(eta_basis_timeout_s=0.2), census=set(cells), cells=cells)
    return EtaBoard(gateway.params, gateway, EtaCalibration())  # the identity: quotes are the raw forecast


async def test_a_refresh_keeps_the_cells_that_answer():
    home = cell_of_point(LAT, LNG)
    others = [c for c in h3.grid_disk(home, 2) if c != home]
    board = board_of({home: FakeCell(basis(LAT, LNG)), others[0]: FakeCell(RuntimeError("retired")),
                      others[1]: FakeCell("slow")})
    await board.refresh()
    assert set(board.cells) == {home} and board.refreshes == 1


async def test_the_quote_is_the_nearest_courier_then_the_drive_in_whole_minutes():
    home = cell_of_point(LAT, LNG)
    board = board_of({home: FakeCell(basis(LAT, LNG, load=0.0))})
    await board.refresh()
    searcher = (LAT + 0.01, LNG)
    [eta, nothing] = board.quotes(NOW_S, [(LAT, LNG, 12.0), (LAT + 1.0, LNG, 12.0)], *searcher)
    assert nothing is None
    # The courier is at the restaurant: the food (12 min) decides, then the drive to the searcher.
    from dispatch.geo import haversine_m

    expected = 12.0 + haversine_m(LAT, LNG, *searcher) / SPEED
    assert eta == {"minutes_low": math.floor(expected), "minutes": round(expected),
                   "minutes_high": math.ceil(expected), "as_of": NOW_S}


async def test_a_cell_without_couriers_borrows_its_neighbours():
    home = cell_of_point(LAT, LNG)
    neighbour = next(c for c in h3.grid_disk(home, 1) if c != home)
    lat, lng = h3.cell_to_latlng(neighbour)
    empty = CourierAvailability(np.empty(0), np.empty(0), np.empty(0), 0.0, NOW_S / 60).to_lists()
    board = board_of({home: FakeCell(empty), neighbour: FakeCell(basis(lat, lng, free_in_min=3.0))})
    await board.refresh()
    [eta] = board.quotes(NOW_S, [(LAT, LNG, 0.0)], LAT, LNG)
    assert eta is not None and eta["minutes"] >= 3
    far_cell = cell_of_point(LAT + 1.0, LNG)
    quotes = board.board
    assert quotes.pool_of(far_cell) == -1
    pool = quotes.pool_of(home)
    assert quotes.x[quotes.pool_first[pool]:quotes.pool_stop[pool]].tolist() == [lng]


def test_the_board_promises_with_the_live_calibration_by_default():
    assert EtaBoard(GatewayParams()).calibration == live_calibration()


async def test_the_replica_and_sql_routes_quote_alike(app, as_role, monkeypatch):
    """One piece of code quotes both routes: with a board of couriers, pages are byte-identical."""
    base = (-35.0 + random.uniform(-3, 3), 20.0 + random.uniform(-3, 3))
    owner, customer = as_role("restaurant"), as_role("customer")
    tag = "q" + uuid.uuid4().hex[:8]
    rng = random.Random(5)
    for i in range(12):
        await make_restaurant(owner, name=f"Q{i}", latitude=base[0] + rng.uniform(-0.04, 0.04),
                              longitude=base[1] + rng.uniform(-0.04, 0.04), delivery_radius_m=8000,
                              cuisine_tags=[tag], prep_minutes=rng.choice([5, 15, 30]))
    home = cell_of_point(*base)
    board = EtaBoard(GatewayParams())
    board.install({home: CourierAvailability.from_lists(basis(base[0] + 0.01, base[1], free_in_min=4.0, load=1.5))})
    monkeypatch.setattr(app.state, "eta_board", board, raising=False)
    monkeypatch.setattr(restaurants, "time", SimpleNamespace(time=lambda: NOW_S))
    replica = app.state.catalog.replica
    await eventually(lambda: len(replica) and replica.ready, what="the replica")

    async def page(use_replica: bool) -> bytes:
        replica.ready = use_replica
        try:
            r = await customer.get("/v1/restaurants/nearby", params={"lat": base[0], "lng": base[1],
                                                                    "radius_m": 9000, "limit": 20, "cuisine": tag})
        finally:
            replica.ready = True
        assert r.status_code == 200, r.text
        return r.content

    from_sql, from_replica = await page(False), await page(True)
    assert from_replica == from_sql
    items = orjson.loads(from_sql)["items"]
    quoted = [i["delivery_eta"] for i in items if i["delivery_eta"] is not None]
    assert len(items) == 12 and quoted, "restaurants of the couriers' cell (or around it) are quoted"
    assert all(q["minutes_low"] <= q["minutes"] <= q["minutes_high"] and q["as_of"] == NOW_S for q in quoted)
