"""Position fan-out: the assigned driver's position, at most one per ``position_interval_s`` per order, on
the broker, and from the broker to this process's customers following the order (latest wins)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import wire

if TYPE_CHECKING:
    from server.gateway.drivers import DriverLink


class PositionFanout:
    """Publishing drivers' positions and handing them to followers, for :class:`Gateway`."""

    def _publish_position(self, link: DriverLink, lat: float, lng: float, heading, now: float,
                          fix_t: int | None) -> None:
        """The position of a fix, to the followers of each of the driver's orders not sent one too recently."""
        for order_id in link.orders:
            if now - link.position_sent_at.get(order_id, 0.0) < self.params.position_interval_s:
                continue
            link.position_sent_at[order_id] = now
            self.broker.publish(f"order:{order_id}",
                                wire.DriverPosition(order_id, link.driver_id, lat, lng, heading, now, fix_t).to_dict())

    def _on_position(self, message: dict) -> None:
        """A driver position from the broker: to this process's customers following the order."""
        order_id = message["order_id"]
        for customer in self.customers.get(order_id, ()):
            customer.outbox.send_latest(("position", order_id), message)
            self.stats["positions_out"] += 1
