"""GPS in: each fix judged (plausible move, admitted cell), buffered per cell, and pushed to the cells in
batches (one Ray call per cell every ``gps_flush_s``, coalesced while a cell is busy)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import h3.api.basic_int as h3

from dispatch.cells import owner_cell
from dispatch.movement import Fix, implausible_jump
from dispatch.routing import handover_due
from wire import error_frame

if TYPE_CHECKING:
    from server.gateway.drivers import DriverLink

log = logging.getLogger("hexdispatch.gateway")


class GpsBatcher:
    """Fixes waiting for their cell (``fixes``) and the cells still taking a batch, for :class:`Gateway`."""

    def _init_gps(self) -> None:
        """No fixes buffered, no batch in flight."""
        self.fixes: dict[str, dict[str, tuple]] = defaultdict(dict)
        self.gps_in_flight: set[str] = set()  # cells that have not yet taken their last batch
        self._flusher: asyncio.Task | None = None

    def gps(self, link: DriverLink, lat: float, lng: float, heading, speed, now: float,
            fix_t: int | None = None) -> dict | None:
        """Buffer one fix for its cell; publish it to the customers following this driver's orders.

        Returns the error frame of a refused fix, which changes nothing: a jump
        further than any vehicle goes (``dispatch.movement``), a cell outside the
        service area, or a new cell past ``max_cells``. The caller answers it.
        """
        fix = Fix(lat, lng, now)
        jump = implausible_jump(link.last_fix, fix, self.params.movement)
        if jump is not None:
            return error_frame("implausible_jump", f"this fix is {jump.distance_m:,.0f} m from the last one, taken"
                               f" {jump.elapsed_s:.1f} s earlier (at most {jump.allowed_m:,.0f} m is plausible)")
        cell = owner_cell(lat, lng, self.params.cell_res)
        here = h3.int_to_str(cell)
        refusal = self.admit_cell(here, cell)
        if refusal is not None:
            return refusal
        link.last_fix = fix
        if link.home_cell is None:
            link.home_cell = here
        elif handover_due(link.home_cell, here, now, link.last_handover_try, self.params.handover_retry_s):
            link.last_handover_try = now
            self._spawn(self._handover(link, here))
        self.fixes[link.home_cell][link.driver_id] = (link.driver_id, lat, lng, heading, speed, link.capacity, now)
        self.stats["gps_in"] += 1
        self._publish_position(link, lat, lng, heading, now, fix_t)
        return None

    async def _flush_loop(self) -> None:
        """Every ``gps_flush_s``, one call per cell with its drivers' latest fixes.

        A cell gets its next batch only once it has taken the previous one (fixes
        keep coalescing meanwhile), so a slow or restarting cell delays nobody else.
        """
        while True:
            await asyncio.sleep(self.params.gps_flush_s)
            for cell in [c for c, fixes in self.fixes.items() if not fixes and c not in self.cells]:
                del self.fixes[cell]  # a cell that retired
            for cell, fixes in self.fixes.items():
                if fixes and cell not in self.gps_in_flight:
                    self.fixes[cell] = {}
                    self.gps_in_flight.add(cell)
                    self._spawn(self._push_gps(cell, list(fixes.values())))

    async def _push_gps(self, cell: str, fixes: list[tuple]) -> None:
        self.stats["gps_batches"] += 1
        try:
            await self.call_cell(cell, "push_gps", self.id, fixes)
        except Exception as exc:
            log.warning("GPS batch to cell %s failed: %s", cell, exc)
        else:
            # Seen from here, so still observable when this process is too busy to answer HTTP.
            self.stats["gps_to_cell_ms"] = round((time.time() - min(fix[6] for fix in fixes)) * 1000, 1)
        finally:
            self.gps_in_flight.discard(cell)
