"""The status feed: customers follow orders and get every status event in order, without gaps (a missing
one is fetched from ``order_events``; after the listener reconnects, every followed order is filled)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

import wire
from server.gateway.outbox import Outbox
from server.listener import ResilientListener

log = logging.getLogger("hexdispatch.gateway")

#: How long a gap in one order's status events is retried when filling it fails (seconds).
GAP_FILL_DEADLINE_S = 60.0


@dataclass(eq=False)
class CustomerLink:
    customer_id: str
    outbox: Outbox
    last_seq: dict[int, int] = field(default_factory=dict)

def unix_seconds(at: datetime | str) -> float:
    """A time from Postgres (a ``timestamptz``, or its ISO text in a notification) as unix seconds."""
    return (at if isinstance(at, datetime) else datetime.fromisoformat(at)).timestamp()


class StatusFeed:
    """The customers following each order here (``customers``) and their status events, for :class:`Gateway`."""

    def _init_feed(self) -> None:
        """No customer following; the status-event listener made (started by ``start``)."""
        self.customers: dict[int, set[CustomerLink]] = defaultdict(set)
        # Every front door hears every status event; after a lost connection, followers are filled from the table.
        self.listener = ResilientListener(self.dsn, {"order_events": self._on_notify}, on_connect=self._resync,
                                          name="status events")

    async def subscribe(self, customer: CustomerLink, order_id: int, after_seq: int) -> None:
        """Follow an order: every status event after ``after_seq``, then live ones, then positions. Following
        an order again sends only what this customer has not been sent yet (no duplicates)."""
        customer.last_seq[order_id] = max(after_seq, customer.last_seq.get(order_id, after_seq))
        if not self.customers.get(order_id):
            self.broker.subscribe(f"order:{order_id}", self._on_position)
        self.customers[order_id].add(customer)
        try:
            driver = await self.pool.fetchval("SELECT driver_id FROM orders WHERE id = $1", order_id)
            if driver is not None:
                link = self.drivers.get(driver)
                if link is not None:
                    link.orders.add(order_id)
            await self._catch_up(customer, order_id)
        except Exception:  # Postgres unreachable: the customer follows anyway, its events come once it is back
            log.warning("subscribing to order %s: catching up failed; retrying", order_id, exc_info=True)
            self._spawn(self._fill_gap(customer, order_id))

    def unsubscribe(self, customer: CustomerLink, order_id: int | None = None) -> None:
        for oid in [order_id] if order_id is not None else list(customer.last_seq):
            followers = self.customers.get(oid)
            if followers is not None:
                followers.discard(customer)
                if not followers:
                    del self.customers[oid]
                    self.broker.unsubscribe(f"order:{oid}")
            customer.last_seq.pop(oid, None)

    async def _catch_up(self, customer: CustomerLink, order_id: int) -> None:
        await self._fill({order_id: customer.last_seq.get(order_id, 0)})

    async def _fill(self, after: dict[int, int]) -> None:
        """Send every follower of each order in ``after`` the events it lacks, from ``order_events``.

        ``after`` maps an order to a sequence number no follower is behind;
        events a follower already has are skipped, so fills may overlap.
        """
        if not after:
            return
        rows = await self.pool.fetch(
            """SELECT e.order_id, e.seq, e.type, e.status, e.kitchen_status, e.courier_status, e.payload, e.actor, e.at, e.eta
               FROM order_events e JOIN unnest($1::bigint[], $2::bigint[]) AS f(order_id, after_seq)
                 ON e.order_id = f.order_id AND e.seq > f.after_seq
               ORDER BY e.order_id, e.seq""",
            list(after), list(after.values()),
        )
        for row in rows:
            event = dict(row)
            for customer in list(self.customers.get(event["order_id"], ())):
                await customer.outbox.room()  # a long catch-up goes at the pace the socket reads
                self._status_to(customer, event)

    async def _resync(self, _conn) -> None:
        """Listening again: every followed order from its furthest-behind follower's last event."""
        await self._fill({order_id: min(c.last_seq.get(order_id, 0) for c in followers)
                          for order_id, followers in self.customers.items() if followers})

    async def _fill_gap(self, customer: CustomerLink, order_id: int) -> None:
        """:meth:`_catch_up`, retried with back-off while Postgres cannot answer and the customer still follows."""
        retrying = AsyncRetrying(retry=retry_if_exception_type(Exception), stop=stop_after_delay(GAP_FILL_DEADLINE_S),
                                 wait=wait_exponential_jitter(initial=0.2, max=5.0, jitter=0.2))
        try:
            async for attempt in retrying:
                with attempt:
                    if order_id in customer.last_seq:
                        await self._catch_up(customer, order_id)
        except Exception:  # the listener's resynchronisation on reconnect still fills it
            log.warning("status events of order %s: gap not filled", order_id, exc_info=True)

    def _status_to(self, customer: CustomerLink, event: dict) -> bool:
        """Send ``event`` if it is the next one for this customer; False if there is a gap."""
        order_id, seq = event["order_id"], event["seq"]
        last = customer.last_seq.get(order_id)
        if last is None or seq <= last:
            return True
        if seq != last + 1:
            return False
        customer.last_seq[order_id] = seq
        customer.outbox.send(wire.Status(
            order_id, seq, event["type"], event["status"], event.get("kitchen_status"), event.get("courier_status"),
            event.get("payload") or {}, unix_seconds(event["at"]), event.get("eta")))
        self.stats["status_out"] += 1
        return True

    def _on_notify(self, connection, pid, channel, payload: str) -> None:
        import orjson

        event = orjson.loads(payload)
        order_id = event["order_id"]
        driver = (event.get("payload") or {}).get("driver_id")
        link = self.drivers.get(driver) if driver else None
        if link is not None:
            if event["type"] == "assign":
                link.orders.add(order_id)
            elif event["type"] in ("deliver", "unassign"):
                link.orders.discard(order_id)
                link.position_sent_at.pop(order_id, None)
        for customer in list(self.customers.get(order_id, ())):
            if not self._status_to(customer, event):
                self._spawn(self._fill_gap(customer, order_id))
