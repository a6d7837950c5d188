"""Delivery-time quotes at search: every cell's courier availability, kept fresh by one task per front door.

Every ``eta_board_s`` the board asks every cell of the deployment (the census, and the cells this front door
opened) for :meth:`actors.cell.CellActor.eta_basis`, concurrently and each within ``eta_basis_timeout_s``;
a cell that fails, times out or has retired drops out until it answers again. ``GET /v1/restaurants/nearby``
then quotes each restaurant on its page from the couriers of the restaurant's cell, or, when that cell has
none, of its ring-1 neighbours (a cell borrows drivers from its neighbours): :meth:`EtaBoard.quotes`
(``dispatch.eta_quote.quote_restaurants``). Nothing is asked of a cell at search time.
"""

from __future__ import annotations

import asyncio
import logging
import math

import h3
import numpy as np

from actors.cell import NAMESPACE, actor_name, cell_of_point
from dispatch.eta import EtaCalibration
from dispatch.eta_quote import CourierAvailability, quote_restaurants
from dispatch.matcher import TravelModel

log = logging.getLogger("hexdispatch.gateway")

#: Restaurants' cells remembered (about 100 bytes each); past it the memory starts again.
OWNERS_KEPT = 500_000


class EtaBoard:
    """Cell id -> :class:`~dispatch.eta_quote.CourierAvailability`, refreshed by :meth:`run` (see the module)."""

    def __init__(self, params, gateway=None, calibration: EtaCalibration | None = None):
        """``params``: the front door's ``GatewayParams``; ``gateway``: whose cells :meth:`refresh` asks (None: the
        board holds what is put in :attr:`cells`, as benchmarks do)."""
        self.gateway = gateway
        self.interval_s, self.timeout_s, self.res = params.eta_board_s, params.eta_basis_timeout_s, params.cell_res
        self.travel = TravelModel.great_circle(params.cell.speed_kmh)
        self.match = params.cell.match
        self.calibration = calibration or EtaCalibration()
        #: The cells' latest availabilities (hex cell id ->), replaced whole at each refresh.
        self.cells: dict[str, CourierAvailability] = {}
        self.refreshes = 0
        self._pools: dict[str, CourierAvailability | None] = {}
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
        self.cells = {cell_id: basis for cell_id, basis in zip(cell_ids, answers) if basis is not None}
        self._pools = {}
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

    def pool(self, cell_id: str) -> CourierAvailability | None:
        """The couriers quoting for restaurants of ``cell_id``: its own, or else its neighbours'; None: none."""
        if cell_id in self._pools:
            return self._pools[cell_id]
        own = self.cells.get(cell_id)
        if own is not None and len(own):
            found: CourierAvailability | None = own
        else:
            near = [basis for c in h3.grid_disk(cell_id, 1) if c != cell_id and (basis := self.cells.get(c))
                    is not None and len(basis)]
            found = CourierAvailability.merged(near).earliest_first() if near else None
        self._pools[cell_id] = found
        return found

    def quotes(self, now_s: float, restaurants, searcher_lat: float, searcher_lng: float) -> list[dict | None]:
        """The ``delivery_eta`` of each restaurant (``(lat, lng, prep_minutes)``) for the searcher's point at
        ``now_s`` (unix seconds): ``{"minutes_low", "minutes", "minutes_high", "as_of"}`` (minutes from now to
        the drop-off: p10 floored, point rounded, p90 ceiled; ``as_of``: unix seconds of the couriers' data),
        or None when its cell and their neighbours have no courier data."""
        found: list[dict | None] = [None] * len(restaurants)
        if not self.cells or not restaurants:
            return found
        bases: list[CourierAvailability] = []
        index_of: dict[str, int] = {}
        basis_of_row = []
        owners = self._owners
        if len(owners) > OWNERS_KEPT:
            owners.clear()
        for lat, lng, _ in restaurants:
            cell_id = owners.get((lat, lng))
            if cell_id is None:
                cell_id = owners[lat, lng] = cell_of_point(lat, lng, self.res)
            index = index_of.get(cell_id)
            if index is None:
                basis = self.pool(cell_id)
                index = index_of[cell_id] = -1 if basis is None else len(bases)
                if basis is not None:
                    bases.append(basis)
            basis_of_row.append(index)
        if not bases:
            return found
        now = now_s / 60.0
        lat, lng, prep = zip(*restaurants)
        promise = quote_restaurants(now, bases, lng, lat, prep, searcher_lng, searcher_lat, self.travel, self.match,
                                    self.calibration, basis_of_row)
        as_of = [round(b.at * 60.0, 3) for b in bases]
        low = np.floor(promise.door_p10 - now).clip(0).tolist()
        point = np.round(promise.door - now).clip(0).tolist()
        high = np.ceil(promise.door_p90 - now).clip(0).tolist()
        for i, which in enumerate(basis_of_row):
            if which >= 0 and not math.isnan(point[i]):
                found[i] = {"minutes_low": int(low[i]), "minutes": int(point[i]), "minutes_high": int(high[i]),
                            "as_of": as_of[which]}
        return found


async def _awaited(ref):
    return await ref
