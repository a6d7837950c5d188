"""The cell directory: opening cells (admission by service area and cap), the census of the deployment's
cells, calls that survive a cell retiring, and the long-poll of every open cell for messages to drivers."""

from __future__ import annotations

import asyncio
import logging
import time

from actors.cell import NAMESPACE, CellRetired, actor_name, cell_actor_class, cell_names
from dispatch.service_area import ServiceArea, cell_refusal
from wire import error_frame

log = logging.getLogger("hexdispatch.gateway")


def cell_placement(resource: str, cluster_resources: dict) -> dict:
    """Actor options placing cells on the nodes that offer ``resource``, if any node does.

    A cell asks for a small share of the resource, so a node offering N units
    hosts up to 1,000 x N cells, and cells are spread over those nodes (Ray's
    default would pack them onto one node until it is half full); without such
    nodes (one machine), cells go anywhere.
    """
    if cluster_resources.get(resource, 0) > 0:
        return {"resources": {resource: 0.001}, "scheduling_strategy": "SPREAD"}
    return {}

def cell_gone_errors() -> tuple[type[BaseException], ...]:
    """What a call to a cell raises when its actor is gone for good: retired, or killed without restart."""
    from ray.exceptions import ActorDiedError

    return CellRetired, ActorDiedError


class CellDirectory:
    """The open cells' actors (``cells``), their pollers, and the deployment's census, for :class:`Gateway`."""

    def _init_cells(self) -> None:
        """The directory of open cells, empty; the service area as configured."""
        self.cells: dict[str, object] = {}
        self.pollers: dict[str, asyncio.Task] = {}
        self.area = ServiceArea(self.params.cell_res, self.params.service_margin_m, self.params.service_area)
        #: Cells with an actor anywhere in the deployment, as last counted (see ``_census_loop``).
        self.census: set[str] = set()
        self._census: asyncio.Task | None = None
        self._actor_class = cell_actor_class()
        self._placement: tuple[float, dict] = (-1e9, {})

    def cell(self, cell_id: str):
        """The actor of ``cell_id``, created on first use (shared by every front door).

        Admission (service area, cap) is decided where fixes and orders come in
        (:meth:`admit_cell`); this opens the cells they were admitted to, or
        that hold what was already admitted.
        """
        handle = self.cells.get(cell_id)
        if handle is None:
            handle = self._actor_class.options(
                name=actor_name(cell_id), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                **self._cell_placement(),
            ).remote(cell_id, self.dsn, self.params.cell, self.params.cell_tick_s)
            self.cells[cell_id] = handle
            self.stats["cells_opened"] += 1
            self._spawn(self._ready(cell_id, handle))
        if cell_id not in self.pollers:
            self.pollers[cell_id] = asyncio.get_running_loop().create_task(self._poll_loop(cell_id))
        return handle

    def _cell_placement(self) -> dict:
        """Where new cells go (re-read every 30 s: cell-hosting nodes may join after we started)."""
        import ray

        read_at, placement = self._placement
        if time.monotonic() - read_at > 30.0:
            placement = cell_placement(self.params.cell_resource, ray.cluster_resources())
            self._placement = (time.monotonic(), placement)
        return placement

    def admit_cell(self, cell_id: str, cell: int, order: bool = False) -> dict | None:
        """Open ``cell_id`` (``cell`` as an integer) for a driver's fix, or for an order (``order``), unless it is
        outside the service area or would be a new cell past ``max_cells``: then the error frame saying why."""
        exists = cell_id in self.cells or cell_id in self.census
        inside = self.area.takes_orders_in(cell) if order else self.area.contains(cell)
        # Counting the cells costs a set union: only for a cell that would be new.
        cells = 0 if exists else len(self.census | self.cells.keys())
        code = cell_refusal(inside, exists, cells, self.params.max_cells)
        if code == "outside_service_area":
            return error_frame(code, f"cell {cell_id} is outside the area this deployment serves")
        if code == "cell_capacity":
            log.warning("cell %s refused: the deployment runs its maximum of %d cells", cell_id, self.params.max_cells)
            return error_frame(code, f"the deployment runs its maximum of {self.params.max_cells} cells;"
                                     f" cell {cell_id} cannot be opened now, retry later")
        self.cell(cell_id)
        return None

    def count_refusal(self, code: str) -> None:
        """A fix or order was refused with ``code`` (admin stats: ``refused_<code>``)."""
        key = f"refused_{code}"
        self.stats[key] = self.stats.get(key, 0) + 1

    def _restaurants_changed(self, restaurant_ids, records) -> None:
        """The catalog replica changed: the service area follows (``None``: it was reloaded whole)."""
        rows = [(r["id"], r["latitude"], r["longitude"], r["delivery_radius_m"]) for r in records]
        if restaurant_ids is None:
            self.area.replace(rows)
            return
        for row in rows:
            self.area.put(*row)
        present = {row[0] for row in rows}
        for restaurant_id in restaurant_ids:
            if restaurant_id not in present:
                self.area.remove(restaurant_id)

    async def _census_loop(self) -> None:
        """Count the deployment's cells (every front door's) for the cap, every ``census_s``."""
        while True:
            await asyncio.sleep(self.params.census_s)
            await self._count_cells()

    async def _count_cells(self) -> None:
        try:
            self.census = set(await asyncio.to_thread(cell_names))
        except Exception:
            log.warning("counting the cells failed; the cap counts what this front door knows", exc_info=True)

    async def call_cell(self, cell_id: str, method: str, *args):
        """``method(*args)`` on the cell's actor. If the actor retired (or died for good) under the call, the cell
        is opened anew (a new actor, rebuilt from Postgres) and called again, for up to ``reopen_timeout_s``."""
        deadline = time.monotonic() + self.params.reopen_timeout_s
        while True:
            handle = self.cell(cell_id)
            try:
                return await getattr(handle, method).remote(*args)
            except cell_gone_errors():
                self._forget(cell_id, handle)
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # a retiring actor keeps its name until it has exited

    def _forget(self, cell_id: str, handle) -> None:
        """The cell's actor retired or died for good: out of the directory; its next use opens it anew."""
        if self.cells.get(cell_id) is not handle:
            return
        log.info("cell %s is gone (retired); it opens anew when next needed", cell_id)
        del self.cells[cell_id]
        self.census.discard(cell_id)
        self.stats["cells_retired"] += 1
        poller = self.pollers.pop(cell_id, None)
        if poller is not None and poller is not asyncio.current_task():
            poller.cancel()
        for link in self.drivers.values():
            if link.home_cell == cell_id:
                link.home_cell = None  # held no online driver: its next fix homes it where it is
        if not self.fixes.get(cell_id, True):
            del self.fixes[cell_id]

    async def _ready(self, cell_id: str, handle) -> None:
        try:
            await handle.ready.remote()
        except Exception:
            log.exception("cell %s failed to start", cell_id)

    async def _poll_loop(self, cell_id: str) -> None:
        while True:
            handle = self.cells.get(cell_id)
            if handle is None:
                if self.pollers.get(cell_id) is asyncio.current_task():
                    del self.pollers[cell_id]
                return
            try:
                messages = await handle.poll.remote(self.id, self.params.poll_timeout_s)
            except asyncio.CancelledError:
                raise
            except cell_gone_errors():
                # Retired, or killed for good (cells restart on failure): the next use opens it anew.
                self._forget(cell_id, handle)
                continue
            except Exception:
                log.warning("poll of cell %s failed; retrying", cell_id, exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for driver_id, message in messages:
                self._to_driver(driver_id, message, cell_id)
