"""Delivery-time quotes at search: every cell's courier availability, kept fresh by one task per front door.

Every ``eta_board_s`` the board asks every cell of the deployment (the census, and the cells this front door
opened) for :meth:`actors.cell.CellActor.eta_basis`, concurrently and each within ``eta_basis_timeout_s``;
a cell that fails, times out or has retired drops out until it answers again. ``GET /v1/restaurants/nearby``
then quotes each restaurant on its page from the couriers of the restaurant's cell, or, when that cell has
none, of its ring-1 neighbours (a cell borrows drivers from its neighbours): :meth:`EtaBoard.quotes`
(``dispatch.eta_quote.QuoteBoard``: the whole page in one kernel call). Nothing is asked of a cell at search time.
"""

from __future__ import annotations

import asyncio
import logging
import math

import numpy as np

from actors.cell import NAMESPACE, actor_name, cell_of_point
from dispatch.eta import EtaCalibration, live_calibration
from dispatch.eta_quote import CourierAvailability, QuoteBoard
from dispatch.matcher import TravelModel

log = logging.getLogger("hexdispatch.gateway")

#: Restaurants' cells remembered (about 100 bytes each); past it the memory starts again.
OWNERS_KEPT = 500_000


class EtaBoard:
    """Cell id -> :class:`~dispatch.eta_quote.CourierAvailability`, refreshed by :meth:`run` (see the module)."""

    def __init__(self, params, gateway=None, calibration: EtaCalibration | None = None):
        """``params``: the front door's ``GatewayParams``; ``gateway``: whose cells :meth:`refresh` asks (None: the
        board quotes from what :meth:`install` is given, as benchmarks do)."""
        self.gateway = gateway
        self.interval_s, self.timeout_s, self.res = params.eta_board_s, params.eta_basis_timeout_s, params.cell_res
        self.travel = TravelModel.great_circle(params.cell.speed_kmh)
        self.match = params.cell.match
        self.calibration = calibration or live_calibration()  # as live cells promise at placement
        #: The cells' latest availabilities (hex cell id ->), replaced whole at each refresh, and all of them
        #: ready to quote from.
        self.cells: dict[str, CourierAvailability] = {}
        self.board = QuoteBoard({}, self.travel, self.match, self.calibration)
        self._as_of: list[float] = []  # unix seconds of each pool of the board
        self.refreshes = 0
        self._handles: dict[str, object] = {}
        #: (lat, lng) of a restaurant -> its cell: restaurants do not move, and the lookup costs more than a quote.
        self._owners: dict[tuple[float, float], str] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> "EtaBoard":
        self._task = asyncio.get_running_loop().create_task(self.run())
        return self

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.warning("refreshing the delivery-time board failed; retrying", exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def refresh(self) -> None:
        """Ask every cell of the deployment for its availability at once; keep those that answered."""
        cell_ids = sorted(self.gateway.census | self.gateway.cells.keys())
        answers = await asyncio.gather(*(self._basis(cell_id) for cell_id in cell_ids))
        self.install({cell_id: basis for cell_id, basis in zip(cell_ids, answers) if basis is not None})
        self.refreshes += 1
        for gone in self._handles.keys() - self.cells.keys():
            del self._handles[gone]

    async def _basis(self, cell_id: str) -> CourierAvailability | None:
        try:
            handle = self.gateway.cells.get(cell_id) or self._handles.get(cell_id)
            if handle is None:  # opened by another front door: look it up, never open it
                import ray

                handle = self._handles[cell_id] = await asyncio.to_thread(
                    ray.get_actor, actor_name(cell_id), namespace=NAMESPACE)
            data = await asyncio.wait_for(_awaited(handle.eta_basis.remote()), self.timeout_s)
            return CourierAvailability.from_lists(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # retired, dead, slow, or gone since the census: out until it answers
            log.debug("cell %s gave no courier availability: %r", cell_id, exc)
            self._handles.pop(cell_id, None)
            return None

    def install(self, cells: dict[str, CourierAvailability]) -> None:
        """Quote from ``cells`` from now on."""
        board = QuoteBoard(cells, self.travel, self.match, self.calibration)
        self.cells, self.board, self._as_of = cells, board, [round(at * 60.0, 3) for at in board.pool_at]

    def quotes(self, now_s: float, restaurants, searcher_lat: float, searcher_lng: float) -> list[dict | None]:
        """The ``delivery_eta`` of each restaurant (``(lat, lng, prep_minutes)``) for the searcher's point at
        ``now_s`` (unix seconds): ``{"minutes_low", "minutes", "minutes_high", "as_of"}`` (minutes from now to
        the drop-off: p10 floored, point rounded, p90 ceiled; ``as_of``: unix seconds of the couriers' data),
        or None when neither its cell nor its neighbours have courier data."""
        board, as_of = self.board, self._as_of
        if not len(board) or not restaurants:
            return [None] * len(restaurants)
        owners = self._owners
        if len(owners) > OWNERS_KEPT:
            owners.clear()
        pools = []
        for lat, lng, _ in restaurants:
            cell_id = owners.get((lat, lng))
            if cell_id is None:
                cell_id = owners[lat, lng] = cell_of_point(lat, lng, self.res)
            pools.append(board.pool_of(cell_id))
        now = now_s / 60.0
        rows = np.array(restaurants, np.float64)
        promise = board.quote(now, pools, rows[:, 1], rows[:, 0], rows[:, 2], searcher_lng, searcher_lat)
        low = np.floor(promise.door_p10 - now).clip(0).tolist()
        point = np.round(promise.door - now).clip(0).tolist()
        high = np.ceil(promise.door_p90 - now).clip(0).tolist()
        return [None if pool < 0 or math.isnan(point[i]) else
                {"minutes_low": int(low[i]), "minutes": int(point[i]), "minutes_high": int(high[i]),
                 "as_of": as_of[pool]}
                for i, pool in enumerate(pools)]


async def _awaited(ref):
    return await ref
