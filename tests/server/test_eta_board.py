"""The front door's board of the cells' courier availability (server.gateway.eta_board), without Ray: which
cells it keeps, which couriers quote for a restaurant (its cell's, else its neighbours'), and the quote's form."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import h3
import numpy as np

from actors.cell import cell_of_point
from dispatch.eta import EtaCalibration, live_calibration
from dispatch.eta_quote import CourierAvailability
from server.gateway import GatewayParams
from server.gateway.eta_board import EtaBoard

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
