"""The order lifecycle table, checked exhaustively over every state, event and actor."""

import itertools

import pytest

from dispatch import lifecycle as lc
from dispatch.lifecycle import Actor, Courier, Event, IllegalTransition, Kitchen, OrderState, Status

ALL_STATES = [
    OrderState(k, c, x) for k, c, x in itertools.product(Kitchen, Courier, (False, True))
]


def reachable_states() -> set[OrderState]:
    seen, frontier = {lc.INITIAL}, [lc.INITIAL]
    while frontier:
        state = frontier.pop()
        for event, actor in itertools.product(Event, Actor):
            try:
                nxt = lc.apply(state, event, actor)
            except IllegalTransition:
                continue
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


REACHABLE = reachable_states()


def test_every_reachable_state_satisfies_the_invariants():
    for state in REACHABLE:
        lc.check_invariants(state)


def test_unreachable_states_are_exactly_the_ones_the_invariants_reject():
    for state in ALL_STATES:
        try:
            lc.check_invariants(state)
            valid = True
        except ValueError:
            valid = False
        # Every valid state is reachable; every unreachable one is rejected.
        assert valid == (state in REACHABLE), state


@pytest.mark.parametrize("state", sorted(REACHABLE, key=repr), ids=repr)
def test_apply_agrees_with_allowed_for_every_event_and_actor(state):
    for event, actor in itertools.product(Event, Actor):
        reason = lc.allowed(state, event, actor)
        if reason is None:
            nxt = lc.apply(state, event, actor)
            rule = lc.TRANSITIONS[event]
            assert nxt.kitchen == (rule.kitchen_to or state.kitchen)
            assert nxt.courier == (rule.courier_to or state.courier)
            assert nxt.cancelled == (state.cancelled or rule.cancels)
        else:
            with pytest.raises(IllegalTransition) as info:
                lc.apply(state, event, actor)
            assert info.value.reason == reason


def test_terminal_states_accept_nothing():
    for state in REACHABLE:
        if state.terminal:
            for event, actor in itertools.product(Event, Actor):
                assert lc.allowed(state, event, actor) is not None


def test_happy_path_statuses():
    path = [
        (Event.ACCEPT, Actor.RESTAURANT, Status.ACCEPTED),
        (Event.START_PREPARING, Actor.RESTAURANT, Status.PREPARING),
        (Event.ASSIGN, Actor.SYSTEM, Status.DRIVER_ASSIGNED),
        (Event.MARK_READY, Actor.RESTAURANT, Status.DRIVER_ASSIGNED),
        (Event.ARRIVE, Actor.DRIVER, Status.AT_RESTAURANT),
        (Event.PICK_UP, Actor.DRIVER, Status.PICKED_UP),
        (Event.DELIVER, Actor.DRIVER, Status.DELIVERED),
    ]
    state = lc.INITIAL
    assert state.status is Status.PLACED
    for event, actor, status in path:
        state = lc.apply(state, event, actor)
        assert state.status is status
    assert state.terminal


def test_redispatch_keeps_kitchen_progress():
    state = lc.INITIAL
    for event, actor in [(Event.ACCEPT, Actor.RESTAURANT), (Event.MARK_READY, Actor.RESTAURANT),
                         (Event.ASSIGN, Actor.SYSTEM), (Event.ARRIVE, Actor.DRIVER)]:
        state = lc.apply(state, event, actor)
    state = lc.apply(state, Event.UNASSIGN, Actor.SYSTEM)
    assert (state.kitchen, state.courier, state.status) == (Kitchen.READY, Courier.UNASSIGNED, Status.READY)
    assert lc.apply(state, Event.ASSIGN, Actor.SYSTEM).status is Status.DRIVER_ASSIGNED


def test_pick_up_marks_food_ready():
    state = OrderState(Kitchen.PREPARING, Courier.AT_RESTAURANT)
    assert lc.apply(state, Event.PICK_UP, Actor.DRIVER).kitchen is Kitchen.READY


def test_who_may_do_what():
    assert lc.allowed(lc.INITIAL, Event.ACCEPT, Actor.CUSTOMER) is not None
    assert lc.allowed(lc.INITIAL, Event.ASSIGN, Actor.DRIVER) is not None
    assert lc.allowed(lc.INITIAL, Event.ASSIGN, Actor.SYSTEM) is None
    preparing = OrderState(Kitchen.PREPARING)
    assert lc.allowed(preparing, Event.CANCEL, Actor.CUSTOMER) is not None
    assert lc.allowed(preparing, Event.CANCEL, Actor.RESTAURANT) is None
    # A customer may recall an assigned driver while the kitchen has not started.
    assert lc.allowed(OrderState(Kitchen.ACCEPTED, Courier.ASSIGNED), Event.CANCEL, Actor.CUSTOMER) is None
    picked = OrderState(Kitchen.READY, Courier.PICKED_UP)
    assert lc.allowed(picked, Event.CANCEL, Actor.ADMIN) is not None


from dispatch.lifecycle import (  # noqa: E402
    DRIVER_TRANSITIONS,
    DriverEvent,
    DriverStatus,
    IllegalDriverTransition,
    apply_driver,
)


def test_driver_table_exhaustively():
    for event, (sources, target) in DRIVER_TRANSITIONS.items():
        for status in DriverStatus:
            if status in sources:
                assert apply_driver(status, event) is target
            else:
                with pytest.raises(IllegalDriverTransition):
                    apply_driver(status, event)


def test_driver_day():
    status = DriverStatus.OFFLINE
    for event in [DriverEvent.GO_ONLINE, DriverEvent.OFFER, DriverEvent.DECLINE, DriverEvent.OFFER,
                  DriverEvent.ACCEPT, DriverEvent.ARRIVE, DriverEvent.PICK_UP, DriverEvent.DELIVER_ONE,
                  DriverEvent.DELIVER_LAST, DriverEvent.GO_OFFLINE]:
        status = apply_driver(status, event)
    assert status is DriverStatus.OFFLINE


def test_every_driver_status_is_reachable_and_can_get_back_offline():
    reachable, frontier = {DriverStatus.OFFLINE}, [DriverStatus.OFFLINE]
    while frontier:
        status = frontier.pop()
        for event, (sources, target) in DRIVER_TRANSITIONS.items():
            if status in sources and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(DriverStatus)
    for status in DriverStatus:
        if status is not DriverStatus.OFFLINE:
            assert apply_driver(status, DriverEvent.LOST) is DriverStatus.OFFLINE


# The dispatch phase of an order in its cell, against the courier track and the driver lifecycle.

PHASE_EVENTS = list(lc.PhaseEvent)


def test_terminal_statuses_are_those_of_finished_states():
    assert lc.TERMINAL_STATUSES == {s.status.value for s in REACHABLE if s.terminal} == {"delivered", "cancelled"}


def test_phase_table_exhaustively():
    for phase, event in itertools.product(lc.OrderPhase, PHASE_EVENTS):
        sources, target, _ = lc.PHASE_TRANSITIONS[event]
        if phase in sources:
            assert lc.apply_phase(phase, event) is target
        else:
            with pytest.raises(lc.IllegalPhaseTransition):
                lc.apply_phase(phase, event)


def test_every_phase_is_reachable_from_pending_and_can_get_back_to_it():
    def successors(phase):
        return {lc.PHASE_TRANSITIONS[e][1] for e in PHASE_EVENTS if phase in lc.PHASE_TRANSITIONS[e][0]}

    seen, frontier = {lc.OrderPhase.PENDING}, [lc.OrderPhase.PENDING]
    while frontier:
        for nxt in successors(frontier.pop()) - seen:
            seen.add(nxt)
            frontier.append(nxt)
    assert seen == set(lc.OrderPhase)
    # only food in a bag never goes back to waiting for a driver
    stuck = {phase for phase in lc.OrderPhase if not successors(phase)}
    assert stuck == {lc.OrderPhase.PICKED_UP}


def test_each_phase_step_moves_the_courier_track_in_step():
    """A phase event's persisted order event takes every agreeing courier state to one agreeing with the new
    phase; a phase event persisting nothing needs no courier change."""
    for event in PHASE_EVENTS:
        sources, target, order_event = lc.PHASE_TRANSITIONS[event]
        for source in sources:
            if order_event is None:
                assert lc.PHASE_COURIER[source] <= lc.PHASE_COURIER[target], (event, source)
                continue
            moved = [lc.apply(state, order_event, Actor.SYSTEM) for state in REACHABLE
                     if state.courier in lc.PHASE_COURIER[source] and lc.allowed(state, order_event, Actor.SYSTEM) is None]
            assert moved, (event, source)
            assert all(state.courier in lc.PHASE_COURIER[target] for state in moved), (event, source)


def test_phase_and_driver_status_agree_with_the_driver_table():
    """Where a phase needs a driver, those statuses exist and hold orders or an offer; a rebuilt order
    gets the one settled phase agreeing with its stored courier state."""
    for phase, statuses in lc.PHASE_DRIVER.items():
        if statuses is None:
            assert phase is lc.OrderPhase.PENDING
        elif phase is lc.OrderPhase.OFFERED:
            assert statuses == {lc.DriverStatus.OFFERED}
        else:
            assert phase in lc.IN_A_JOB and statuses <= lc.HOLDING_ORDERS
    for courier in set(Courier) - {lc.FINISHING_COURIER}:
        settled = [p for p in lc.SETTLED if courier in lc.PHASE_COURIER[p]]
        assert settled == [lc.rebuilt_phase(courier)]
