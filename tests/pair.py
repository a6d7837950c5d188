"""An in-memory connection pair (in the spirit of h11's ``ConnectionPair``): one cell core, the order lifecycle
as the system of record, and scripted driver and customer apps exchanging ``wire`` frames. No sockets, no
Postgres, no Ray: the clock is passed in, so TTLs, expiry, heartbeat loss and races run in milliseconds.

Every frame crosses the pair encoded and decoded by ``wire`` (msgpack), as it would cross a socket: the apps
see maps, the shell sees validated client frames. Persistence can be held back (``hold_writes``) to open the
window in which a cancellation races an accepted offer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import wire
from dispatch import lifecycle
from dispatch.cell import (
    CellCore, CellError, CellParams, Command, GiveEstimate, LiveOrder, PersistAssignment, PersistOrderEvent,
    SendToDriver,
)
from dispatch.lifecycle import Actor, DriverEvent, Event, IllegalTransition, OrderState

T0 = 1_800_000_000.0
LAT, LNG = 41.88, -87.63
#: The driver reports the shell records as an order event before the core applies them.
REPORTS = {"at_restaurant": DriverEvent.ARRIVE, "picked_up": DriverEvent.PICK_UP}


@dataclass
class App:
    """A scripted app: what it received, as the maps a real app decodes."""

    inbox: list[dict] = field(default_factory=list)

    def take(self, frame: wire.ServerFrame) -> None:
        self.inbox.append(wire.load(wire.encode(frame)))

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.inbox if m["type"] == kind]

    def last(self, kind: str) -> dict:
        found = self.of(kind)
        assert found, f"no {kind} frame among {[m['type'] for m in self.inbox]}"
        return found[-1]


class Pair:
    """The cell core and the lifecycle on one side, driver and customer apps on the other."""

    def __init__(self, params: CellParams | None = None, now: float = T0):
        self.core = CellCore("pair", params or CellParams(offer_ttl_s=20.0, heartbeat_ttl_s=30.0))
        self.now = now
        self.orders: dict[int, OrderState] = {}
        self.trail: dict[int, list[wire.Status]] = {}
        self.eta: dict[int, dict] = {}  # the estimate each order's events carry
        self.drivers: dict[str, App] = {}
        self.customers: dict[int, App] = {}
        self.hold_writes = False
        self.held: list[Command] = []

    # The system of record -------------------------------------------------------

    def record(self, order_id: int, event: Event, actor: Actor, payload: dict | None = None) -> None:
        """Apply ``event`` to the order (``IllegalTransition`` if it does not fit) and append its status event."""
        state = lifecycle.apply(self.orders[order_id], event, actor)
        self.orders[order_id] = state
        if event is Event.ESTIMATE:
            self.eta[order_id] = payload
        trail = self.trail.setdefault(order_id, [])
        status = wire.Status(order_id, len(trail) + 1, event.value, state.status.value, state.kitchen.value,
                             state.courier.value, payload or {}, self.now, self.eta.get(order_id))
        trail.append(status)
        if order_id in self.customers:
            self.customers[order_id].take(status)

    # Scripted world ---------------------------------------------------------------

    def place(self, order_id: int, ready_in_s: float = 0.0, dlat: float = 0.0) -> App:
        """A customer places an order and follows it; returns the customer's app."""
        self.orders[order_id] = OrderState()
        self.customers[order_id] = App()
        self.trail[order_id] = []
        self.record_placed(order_id)
        self.core.add_order(LiveOrder(order_id, order_id, LAT + dlat, LNG, LAT + dlat + 0.01, LNG + 0.01,
                                      self.now, self.now + ready_in_s))
        self.run(self.core.estimates(self.now, only=order_id))  # the promise, as the cell actor gives it
        return self.customers[order_id]

    def record_placed(self, order_id: int) -> None:
        state = self.orders[order_id]
        status = wire.Status(order_id, 1, "placed", state.status.value, state.kitchen.value, state.courier.value,
                             {}, self.now)
        self.trail[order_id].append(status)
        self.customers[order_id].take(status)

    def kitchen(self, order_id: int, event: Event) -> None:
        self.record(order_id, event, Actor.RESTAURANT)

    def cancel(self, order_id: int) -> None:
        self.record(order_id, Event.CANCEL, Actor.CUSTOMER)
        self.run(self.core.withdraw_order(order_id, "cancelled"))

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, then tick the cell."""
        self.now += seconds
        self.run(self.core.tick(self.now))

    def flush(self) -> None:
        """Carry out the writes held back while ``hold_writes`` was set."""
        held, self.held = self.held, []
        self.run(held)

    # The shell ----------------------------------------------------------------------

    def run(self, commands: list[Command]) -> None:
        """Execute the core's commands: frames to drivers, writes to the system of record."""
        for command in commands:
            if isinstance(command, SendToDriver):
                self.drivers.setdefault(command.driver_id, App()).take(command.message)
            elif self.hold_writes:
                self.held.append(command)
            elif isinstance(command, PersistAssignment):
                self.run(self.core.assignment_persisted(command.job_id, *self._assign(command)))
            elif isinstance(command, PersistOrderEvent):
                self.record(command.order_id, Event(command.event), Actor.SYSTEM, {"driver_id": command.driver_id})
            elif isinstance(command, GiveEstimate):
                try:
                    self.record(command.order_id, Event.ESTIMATE, Actor.SYSTEM, command.estimate.to_json())
                except IllegalTransition:  # finished meanwhile: nothing more to promise
                    continue
                self.core.estimates_given([command])

    def _assign(self, command: PersistAssignment) -> tuple[bool, str]:
        """Record the assignment of every order of the job, or of none (as one transaction)."""
        saved = (dict(self.orders), {k: list(v) for k, v in self.trail.items()})
        try:
            for order_id in command.order_ids:
                self.record(order_id, Event.ASSIGN, Actor.SYSTEM, {"driver_id": command.driver_id})
        except IllegalTransition as exc:
            self.orders, self.trail = saved
            return False, str(exc)
        return True, ""

    def connect(self, driver_id: str) -> App:
        """A driver's (new) socket: a fresh app that gets its ``welcome`` first."""
        app = self.drivers[driver_id] = App()
        view = self.core.driver_view(driver_id) or {"state": "offline", "offer": None, "job": None}
        orders = sorted(i for i, o in self.orders.items() if not o.terminal and self._holder(i) == driver_id)
        app.take(wire.Welcome(driver_id, wire.PROTOCOL_VERSION, self.now, view["state"], orders, view["offer"],
                              view["job"]))
        return app

    def _holder(self, order_id: int) -> str | None:
        live = self.core.orders.get(order_id)
        return live.driver_id if live is not None else None

    def send(self, driver_id: str, frame: wire.ClientFrame) -> None:
        """The driver's app sends ``frame``; the answer (if any) lands in its inbox."""
        message = wire.decode(wire.encode(frame), wire.DRIVER_MESSAGES)
        app = self.drivers.setdefault(driver_id, App())
        if isinstance(message, wire.Gps):
            self.core.driver_seen(driver_id, message.lat, message.lng, self.now)
            return
        try:
            fields = message.model_dump(exclude={"type", "id"})
            self.run(self._act(driver_id, message))
            app.take(wire.Ack(message.type, message.id, **fields))
        except CellError as exc:
            app.take(wire.error_frame(exc.code, exc.message, message.id))
        except IllegalTransition as exc:
            app.take(wire.error_frame("illegal_transition", str(exc), message.id))

    def _act(self, driver_id: str, message: wire.Command) -> list[Command]:
        core = self.core
        if isinstance(message, wire.AcceptOffer):
            return core.accept(driver_id, message.offer_id, self.now)
        if isinstance(message, wire.DeclineOffer):
            return core.decline(driver_id, message.offer_id, self.now)
        if isinstance(message, (wire.AtRestaurant, wire.PickedUp)):
            # As the actor does: recorded first, then applied (the writes it returns are the ones recorded).
            self._record_reports(core.check_job_event(driver_id, message.job_id, REPORTS[message.type]))
            core.job_event(driver_id, message.job_id, REPORTS[message.type], now=self.now)
        elif isinstance(message, wire.Delivered):
            self._record_reports(core.check_delivered(driver_id, message.order_id))
            core.delivered(driver_id, message.order_id)
        elif isinstance(message, wire.GoOffline):
            core.driver_offline(driver_id, self.now)
        return []

    def _record_reports(self, planned: list[PersistOrderEvent]) -> None:
        for event in planned:
            self.record(event.order_id, Event(event.event), Actor.DRIVER, {"driver_id": event.driver_id})

    def gps(self, driver_id: str, dlat: float = 0.001) -> None:
        self.send(driver_id, wire.Gps(lat=LAT + dlat, lng=LNG))
