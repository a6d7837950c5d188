"""The order lifecycle: one transition table, its invariants, and a pure ``apply``.

An order moves along two tracks at once, because a good dispatcher sends the
driver while the kitchen is still cooking:

* the **kitchen** track: placed -> accepted -> preparing -> ready
* the **courier** track: unassigned -> assigned -> at_restaurant -> picked_up -> delivered

plus a terminal ``cancelled`` flag. The single customer-facing ``status``
(placed, accepted, preparing, ready, driver_assigned, at_restaurant,
picked_up, delivered, cancelled) is derived from the two tracks by
:func:`status_of`, never set by hand.

Every change of an order is an :class:`Event` applied with :func:`apply`,
which either returns the next :class:`OrderState` or raises
:class:`IllegalTransition` and changes nothing. The re-dispatch path (a
driver drops out or declines after accepting) is the ``unassign`` event,
which puts the courier track back to ``unassigned`` while the kitchen track
keeps its progress.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class Kitchen(str, Enum):
    PLACED = "placed"
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    READY = "ready"


class Courier(str, Enum):
    UNASSIGNED = "unassigned"
    ASSIGNED = "assigned"
    AT_RESTAURANT = "at_restaurant"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"


#: The courier state that finishes an order (as ``cancelled`` does): what the "active order" SQL predicate excludes.
FINISHING_COURIER = Courier.DELIVERED


class Status(str, Enum):
    """The single status shown to customers and stored for queries."""

    PLACED = "placed"
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    READY = "ready"
    DRIVER_ASSIGNED = "driver_assigned"
    AT_RESTAURANT = "at_restaurant"
    PICKED_UP = "picked_up"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


class Actor(str, Enum):
    """Who may cause an event. ``system`` is the dispatcher itself."""

    CUSTOMER = "customer"
    RESTAURANT = "restaurant"
    DRIVER = "driver"
    ADMIN = "admin"
    SYSTEM = "system"


class Event(str, Enum):
    ACCEPT = "accept"
    START_PREPARING = "start_preparing"
    MARK_READY = "mark_ready"
    REVISE_READY = "revise_ready"
    ASSIGN = "assign"
    ARRIVE = "arrive"
    PICK_UP = "pick_up"
    DELIVER = "deliver"
    UNASSIGN = "unassign"
    CANCEL = "cancel"
    ESTIMATE = "estimate"


@dataclass(frozen=True)
class OrderState:
    kitchen: Kitchen = Kitchen.PLACED
    courier: Courier = Courier.UNASSIGNED
    cancelled: bool = False

    @property
    def status(self) -> Status:
        return status_of(self)

    @property
    def terminal(self) -> bool:
        return self.cancelled or self.courier is FINISHING_COURIER


@dataclass(frozen=True)
class Transition:
    """One row of the table: from which track states an event is legal, and what it sets.

    ``None`` in a ``*_from`` field means "any state of that track"; ``None`` in a
    ``*_to`` field means "that track is left as it is".
    """

    actors: frozenset[Actor]
    kitchen_from: frozenset[Kitchen] | None = None
    courier_from: frozenset[Courier] | None = None
    kitchen_to: Kitchen | None = None
    courier_to: Courier | None = None
    cancels: bool = False


K, C, A = Kitchen, Courier, Actor
_STAFF = frozenset({A.ADMIN, A.SYSTEM})
_BEFORE_PICKUP = frozenset({C.UNASSIGNED, C.ASSIGNED, C.AT_RESTAURANT})
_COOKING = frozenset({K.PLACED, K.ACCEPTED, K.PREPARING})

TRANSITIONS: dict[Event, Transition] = {
    Event.ACCEPT: Transition(
        _STAFF | {A.RESTAURANT}, kitchen_from=frozenset({K.PLACED}), kitchen_to=K.ACCEPTED
    ),
    Event.START_PREPARING: Transition(
        _STAFF | {A.RESTAURANT},
        kitchen_from=frozenset({K.ACCEPTED}),
        courier_from=_BEFORE_PICKUP,
        kitchen_to=K.PREPARING,
    ),
    Event.MARK_READY: Transition(
        _STAFF | {A.RESTAURANT},
        kitchen_from=frozenset({K.ACCEPTED, K.PREPARING}),
        courier_from=_BEFORE_PICKUP,
        kitchen_to=K.READY,
    ),
    # A new ready estimate changes no state, but is only meaningful while cooking.
    Event.REVISE_READY: Transition(
        _STAFF | {A.RESTAURANT}, kitchen_from=_COOKING, courier_from=_BEFORE_PICKUP
    ),
    Event.ASSIGN: Transition(
        _STAFF, courier_from=frozenset({C.UNASSIGNED}), courier_to=C.ASSIGNED
    ),
    Event.ARRIVE: Transition(
        _STAFF | {A.DRIVER},
        courier_from=frozenset({C.ASSIGNED}),
        courier_to=C.AT_RESTAURANT,
    ),
    # Handing the food to the driver proves it was ready, whatever the kitchen clicked.
    Event.PICK_UP: Transition(
        _STAFF | {A.DRIVER},
        courier_from=frozenset({C.AT_RESTAURANT}),
        kitchen_to=K.READY,
        courier_to=C.PICKED_UP,
    ),
    Event.DELIVER: Transition(
        _STAFF | {A.DRIVER}, courier_from=frozenset({C.PICKED_UP}), courier_to=C.DELIVERED
    ),
    # Re-dispatch: the driver dropped out, declined after accepting, or was recalled.
    Event.UNASSIGN: Transition(
        _STAFF | {A.DRIVER},
        courier_from=frozenset({C.ASSIGNED, C.AT_RESTAURANT}),
        courier_to=C.UNASSIGNED,
    ),
    Event.CANCEL: Transition(
        _STAFF | {A.CUSTOMER, A.RESTAURANT}, courier_from=_BEFORE_PICKUP, cancels=True
    ),
    # A new delivery estimate (``dispatch.eta``) changes no state; any time until the order is finished.
    Event.ESTIMATE: Transition(_STAFF),
}

# Customers may cancel (withdrawing the order, or recalling its driver) only
# before the kitchen starts cooking; the restaurant and staff may cancel until
# the food leaves the restaurant.
CUSTOMER_CANCELLABLE_KITCHEN = frozenset({K.PLACED, K.ACCEPTED})


class IllegalTransition(Exception):
    """An event that the table forbids in the order's current state, or for this actor."""

    def __init__(self, event: Event, state: OrderState, reason: str):
        super().__init__(f"cannot {event.value} an order that is {state.status.value}: {reason}")
        self.event = event
        self.state = state
        self.reason = reason


def status_of(state: OrderState) -> Status:
    """The customer-facing status of an order state."""
    if state.cancelled:
        return Status.CANCELLED
    if state.courier is Courier.UNASSIGNED:
        return Status(state.kitchen.value)
    if state.courier is Courier.ASSIGNED:
        return Status.DRIVER_ASSIGNED
    return Status(state.courier.value)


def check_invariants(state: OrderState) -> None:
    """Raise ``ValueError`` if ``state`` is one no sequence of legal events can reach."""
    if state.courier in (Courier.PICKED_UP, Courier.DELIVERED) and state.kitchen is not Kitchen.READY:
        raise ValueError("food left the restaurant before the kitchen track reached ready")
    if state.cancelled and state.courier in (Courier.PICKED_UP, Courier.DELIVERED):
        raise ValueError("an order cannot be cancelled after pick-up")


def allowed(state: OrderState, event: Event, actor: Actor) -> str | None:
    """``None`` when ``actor`` may apply ``event`` to ``state``; otherwise the reason it may not."""
    rule = TRANSITIONS.get(event)
    if rule is None:
        return "this event is not part of the lifecycle"
    if actor not in rule.actors:
        return f"a {actor.value} may not do this"
    if state.terminal:
        return "the order is finished"
    if rule.kitchen_from is not None and state.kitchen not in rule.kitchen_from:
        return f"the kitchen is at {state.kitchen.value}"
    if rule.courier_from is not None and state.courier not in rule.courier_from:
        return f"the courier is at {state.courier.value}"
    if (
        event is Event.CANCEL
        and actor is Actor.CUSTOMER
        and state.kitchen not in CUSTOMER_CANCELLABLE_KITCHEN
    ):
        return "the kitchen has started on it; ask support to cancel"
    return None


def apply(state: OrderState, event: Event, actor: Actor) -> OrderState:
    """The state after ``actor`` applies ``event``; raises ``IllegalTransition`` otherwise."""
    reason = allowed(state, event, actor)
    if reason is not None:
        raise IllegalTransition(event, state, reason)
    rule = TRANSITIONS[event]
    nxt = replace(
        state,
        kitchen=rule.kitchen_to or state.kitchen,
        courier=rule.courier_to or state.courier,
        cancelled=state.cancelled or rule.cancels,
    )
    check_invariants(nxt)
    return nxt


def state_from_row(kitchen: str, courier: str, cancelled: bool) -> OrderState:
    """Rebuild an :class:`OrderState` from its stored columns."""
    return OrderState(Kitchen(kitchen), Courier(courier), bool(cancelled))


INITIAL = OrderState()


def _reachable_states() -> tuple[OrderState, ...]:
    """Every order state some sequence of legal events can reach (the invariants hold)."""
    states = []
    for kitchen in Kitchen:
        for courier in Courier:
            for cancelled in (False, True):
                state = OrderState(kitchen, courier, cancelled)
                try:
                    check_invariants(state)
                except ValueError:
                    continue
                states.append(state)
    return tuple(states)


#: The customer-facing statuses of a finished order (:attr:`OrderState.terminal`), as stored and sent.
TERMINAL_STATUSES: frozenset[str] = frozenset(s.status.value for s in _reachable_states() if s.terminal)


# --------------------------------------------------------------------------
# The driver lifecycle: where a driver is in its work, as the cell actor sees it.


class DriverStatus(str, Enum):
    OFFLINE = "offline"
    IDLE = "idle"
    OFFERED = "offered"
    EN_ROUTE = "en_route"
    AT_RESTAURANT = "at_restaurant"
    DELIVERING = "delivering"


class DriverEvent(str, Enum):
    GO_ONLINE = "go_online"
    GO_OFFLINE = "go_offline"
    OFFER = "offer"
    DECLINE = "decline"
    OFFER_EXPIRED = "offer_expired"
    ACCEPT = "accept"
    ARRIVE = "arrive"
    PICK_UP = "pick_up"
    DELIVER_ONE = "deliver_one"
    DELIVER_LAST = "deliver_last"
    WITHDRAW = "withdraw"
    LOST = "lost"


D = DriverStatus
_WORKING = frozenset({D.EN_ROUTE, D.AT_RESTAURANT, D.DELIVERING})

#: (from statuses, to status) per driver event. ``WITHDRAW`` is a job taken
#: back before pick-up (its orders cancelled or recalled); ``LOST`` is a
#: driver silent past the heartbeat TTL, whose undelivered orders are
#: re-dispatched.
DRIVER_TRANSITIONS: dict[DriverEvent, tuple[frozenset[DriverStatus], DriverStatus]] = {
    DriverEvent.GO_ONLINE: (frozenset({D.OFFLINE}), D.IDLE),
    DriverEvent.GO_OFFLINE: (frozenset({D.IDLE}), D.OFFLINE),
    DriverEvent.OFFER: (frozenset({D.IDLE}), D.OFFERED),
    DriverEvent.DECLINE: (frozenset({D.OFFERED}), D.IDLE),
    DriverEvent.OFFER_EXPIRED: (frozenset({D.OFFERED}), D.IDLE),
    DriverEvent.ACCEPT: (frozenset({D.OFFERED}), D.EN_ROUTE),
    DriverEvent.ARRIVE: (frozenset({D.EN_ROUTE}), D.AT_RESTAURANT),
    DriverEvent.PICK_UP: (frozenset({D.AT_RESTAURANT}), D.DELIVERING),
    DriverEvent.DELIVER_ONE: (frozenset({D.DELIVERING}), D.DELIVERING),
    DriverEvent.DELIVER_LAST: (frozenset({D.DELIVERING}), D.IDLE),
    DriverEvent.WITHDRAW: (frozenset({D.EN_ROUTE, D.AT_RESTAURANT}), D.IDLE),
    DriverEvent.LOST: (frozenset(DriverStatus) - {D.OFFLINE}, D.OFFLINE),
}

#: Statuses in which a driver may be offered a new job.
DISPATCHABLE = frozenset({D.IDLE})
#: Statuses in which a driver holds orders that must be re-dispatched if it is lost.
HOLDING_ORDERS = _WORKING


class IllegalDriverTransition(Exception):
    def __init__(self, event: DriverEvent, status: DriverStatus):
        super().__init__(f"a driver that is {status.value} cannot {event.value}")
        self.event = event
        self.status = status


def apply_driver(status: DriverStatus, event: DriverEvent) -> DriverStatus:
    """The driver's status after ``event``; raises ``IllegalDriverTransition`` otherwise."""
    sources, target = DRIVER_TRANSITIONS[event]
    if status not in sources:
        raise IllegalDriverTransition(event, status)
    return target



# --------------------------------------------------------------------------
# The dispatch phase of an order inside its cell (``dispatch.cell``): between the
# persisted courier track (above) and the driver lifecycle, with what links them.


class OrderPhase(str, Enum):
    PENDING = "pending"
    OFFERED = "offered"
    ASSIGNING = "assigning"
    """Accepted by a driver; the assignment is being written to Postgres."""
    ASSIGNED = "assigned"
    PICKED_UP = "picked_up"


class PhaseEvent(str, Enum):
    OFFER = "offer"
    OFFER_CLOSED = "offer_closed"
    """Declined, expired, withdrawn, or its driver lost."""
    ACCEPT = "accept"
    CONFIRM = "confirm"
    """Postgres recorded the assignment."""
    RELEASE = "release"
    """Taken from its driver before pick-up: the write was refused, the driver was lost, or repair."""
    PICK_UP = "pick_up"


P = OrderPhase
#: (from phases, to phase, the order event that moves the courier track along, once the earlier writes
#: landed, or ``None``) per phase event. A refused assignment is released with nothing to undo.
PHASE_TRANSITIONS: dict[PhaseEvent, tuple[frozenset[OrderPhase], OrderPhase, Event | None]] = {
    PhaseEvent.OFFER: (frozenset({P.PENDING}), P.OFFERED, None),
    PhaseEvent.OFFER_CLOSED: (frozenset({P.OFFERED}), P.PENDING, None),
    PhaseEvent.ACCEPT: (frozenset({P.OFFERED}), P.ASSIGNING, Event.ASSIGN),
    PhaseEvent.CONFIRM: (frozenset({P.ASSIGNING}), P.ASSIGNED, None),
    PhaseEvent.RELEASE: (frozenset({P.ASSIGNING, P.ASSIGNED}), P.PENDING, Event.UNASSIGN),
    PhaseEvent.PICK_UP: (frozenset({P.ASSIGNED}), P.PICKED_UP, Event.PICK_UP),
}

#: The persisted courier states that agree with each phase once its writes have landed.
PHASE_COURIER: dict[OrderPhase, frozenset[Courier]] = {
    P.PENDING: frozenset({C.UNASSIGNED}),
    P.OFFERED: frozenset({C.UNASSIGNED}),
    P.ASSIGNING: frozenset({C.ASSIGNED}),
    P.ASSIGNED: frozenset({C.ASSIGNED, C.AT_RESTAURANT}),
    P.PICKED_UP: frozenset({C.PICKED_UP}),
}

#: The statuses its driver may have while an order is in each phase (``None``: no driver holds it).
PHASE_DRIVER: dict[OrderPhase, frozenset[DriverStatus] | None] = {
    P.PENDING: None,
    P.OFFERED: frozenset({D.OFFERED}),
    P.ASSIGNING: frozenset({D.EN_ROUTE}),
    P.ASSIGNED: frozenset({D.EN_ROUTE, D.AT_RESTAURANT}),
    P.PICKED_UP: frozenset({D.DELIVERING}),
}

#: Phases in which the order belongs to a driver's job.
IN_A_JOB = frozenset({P.ASSIGNING, P.ASSIGNED, P.PICKED_UP})
#: Phases with no offer out and no write in flight: what a cell rebuilds from Postgres.
SETTLED = frozenset({P.PENDING, P.ASSIGNED, P.PICKED_UP})


def rebuilt_phase(courier: Courier) -> OrderPhase:
    """The phase a cell gives an order rebuilt from its stored (not finishing) courier state."""
    return next(phase for phase in OrderPhase if phase in SETTLED and courier in PHASE_COURIER[phase])


class IllegalPhaseTransition(Exception):
    """A phase event that the table forbids in the order's current phase (a bug in the cell core)."""


def apply_phase(phase: OrderPhase, event: PhaseEvent) -> OrderPhase:
    """The order's dispatch phase after ``event``; raises ``IllegalPhaseTransition`` otherwise."""
    sources, target, _ = PHASE_TRANSITIONS[event]
    if phase in sources:
        return target
    raise IllegalPhaseTransition(f"an order that is {phase.value} cannot {event.value}")
