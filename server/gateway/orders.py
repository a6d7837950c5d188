"""Orders from the HTTP API: admitted (their cell opened) before they are placed, then told to their cell."""

from __future__ import annotations

import asyncio
import logging

import h3.api.basic_int as h3

from actors.cell import LIVE_ORDER_SQL, NEW_ORDER_FIELDS, cell_of_point
from dispatch.cell import LiveOrder
from dispatch.cells import owner_cell
from server.errors import ApiError

log = logging.getLogger("hexdispatch.gateway")


class OrderIntake:
    """Placed and changed orders to their cells, for :class:`Gateway`."""

    async def admit_order(self, restaurant_id: int) -> None:
        """Open the cell of an order about to be placed, or refuse the order (``ApiError``): its restaurant's cell
        is outside the service area (422), or would be a new cell past ``max_cells`` (503). Placed orders then
        always have a live cell. An unknown restaurant passes (placing the order answers 404)."""
        position = self.replica.position(restaurant_id) if self.replica is not None else None
        if position is None:
            row = await self.pool.fetchrow("SELECT latitude, longitude FROM restaurants WHERE id = $1", restaurant_id)
            if row is None:
                return
            position = (row["latitude"], row["longitude"])
        cell = owner_cell(*position, self.params.cell_res)
        refusal = self.admit_cell(h3.int_to_str(cell), cell, order=True)
        if refusal is not None:
            self.count_refusal(refusal.code)
            raise ApiError(422 if refusal.code == "outside_service_area" else 503, refusal.code, refusal.message)

    async def order_placed(self, order: LiveOrder) -> dict | None:
        """A new order (committed): to its cell at once, without reading it back from Postgres. Returns the delivery
        promise the cell gave and stored (``dispatch.eta.Estimate.to_json``), or None if it gave none within
        ``promise_timeout_s`` (the cell goes on with the order all the same)."""
        told = self._spawn(self._add_order(order))
        try:
            return await asyncio.wait_for(asyncio.shield(told), self.params.promise_timeout_s)
        except asyncio.TimeoutError:
            return None

    async def _add_order(self, order: LiveOrder) -> dict | None:
        try:
            return await self.call_cell(cell_of_point(order.restaurant_lat, order.restaurant_lng, self.params.cell_res),
                                        "add_order", {name: getattr(order, name) for name in NEW_ORDER_FIELDS})
        except Exception:
            # The cell's periodic sweep of Postgres will still pick the order up.
            log.warning("telling the cell about new order %s failed", order.id, exc_info=True)
            return None

    async def order_changed(self, order_id: int, change: str) -> None:
        """Tell the order's cell about a new ready estimate (``ready``) or a cancellation (``cancelled``)."""
        try:
            row = await self.pool.fetchrow(LIVE_ORDER_SQL, order_id)
            if row is None:
                return
            cell_id = cell_of_point(row["restaurant_lat"], row["restaurant_lng"], self.params.cell_res)
            if change == "ready":
                await self.call_cell(cell_id, "revise_ready", order_id, float(row["ready_at"]))
            elif change == "cancelled":
                await self.call_cell(cell_id, "cancel_order", order_id, "cancelled")
        except Exception:
            # The cell's periodic sweep of Postgres will still pick the change up.
            log.warning("telling the cell about order %s (%s) failed", order_id, change, exc_info=True)

    def notify_order(self, order_id: int, change: str) -> None:
        self._spawn(self.order_changed(order_id, change))
