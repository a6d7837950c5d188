"""Dispatch rules the cell core decides for its actor: borrowing from neighbours, departures, notices."""

from __future__ import annotations

from dispatch.cell import CELL_NOTICES, CellCore, CellParams
from dispatch.lifecycle import TRANSITIONS, Actor, Event
from store.orders import EVENT_EFFECTS
from tests.test_cell import LAT, LNG, T0, offers_of, order


def no_local_driver(params: CellParams, n_orders: int) -> CellCore:
    cell = CellCore("c1", params)
    for oid in range(1, n_orders + 1):
        cell.add_order(order(oid, T0 + oid * 0.001))
    cell.tick(T0)
    return cell


def test_an_order_no_local_driver_took_is_borrowed_for_after_the_delay_and_then_at_that_pace():
    params = CellParams(borrow_after_s=3.0)
    cell = no_local_driver(params, 1)
    assert cell.orders_to_borrow_for(T0 + 2.9) == []
    assert [o.id for o in cell.orders_to_borrow_for(T0 + 3.1)] == [1]
    assert cell.orders_to_borrow_for(T0 + 5.0) == []  # asked 1.9 s ago
    assert [o.id for o in cell.orders_to_borrow_for(T0 + 6.1)] == [1]


def test_at_most_a_few_orders_ask_per_tick_oldest_first_and_gone_orders_are_forgotten():
    params = CellParams(borrow_after_s=3.0, max_borrows_per_tick=2)
    cell = no_local_driver(params, 4)
    assert [o.id for o in cell.orders_to_borrow_for(T0 + 4)] == [1, 2]
    cell.withdraw_order(1, "cancelled")
    # the two oldest are now 2 (asked 0.5 s ago: skipped) and 3
    assert [o.id for o in cell.orders_to_borrow_for(T0 + 4.5)] == [3]
    assert 1 not in cell.borrow_asked


def test_an_order_offered_locally_is_not_borrowed_for():
    cell = CellCore("c1", CellParams(borrow_after_s=3.0))
    cell.driver_seen("a", LAT + 0.001, LNG, T0)
    cell.add_order(order(1))
    assert offers_of(cell.tick(T0), "a")
    assert cell.orders_to_borrow_for(T0 + 10) == []


def test_a_lent_driver_leaves_and_its_late_fixes_are_ignored_for_the_grace():
    cell = CellCore("lender", CellParams(departed_fix_grace_s=5.0))
    cell.driver_seen("far", LAT + 0.05, LNG, T0)
    cell.driver_seen("near", LAT + 0.001, LNG, T0)
    assert cell.lend_nearest_idle(LAT, LNG, 500.0, T0 + 1) is not None
    assert "near" not in cell.drivers and cell.nearest_idle(LAT, LNG, 500.0) is None
    assert not cell.accepts_fix("near", T0 + 5.9)
    assert cell.accepts_fix("near", T0 + 6.1) and cell.accepts_fix("far", T0 + 1)
    assert cell.lend_nearest_idle(LAT, LNG, 500.0, T0 + 2) is None  # "far" is out of reach


def test_a_driver_with_an_offer_does_not_depart():
    cell = CellCore("c1")
    cell.driver_seen("a", LAT + 0.001, LNG, T0)
    cell.add_order(order(1))
    assert offers_of(cell.tick(T0), "a")
    assert cell.depart("a", T0 + 1) is None
    assert cell.accepts_fix("a", T0 + 1.5) and "a" in cell.drivers


def test_old_departures_are_dropped_when_another_driver_departs():
    cell = CellCore("c1", CellParams(departed_fix_grace_s=5.0))
    cell.driver_seen("a", LAT, LNG, T0)
    cell.driver_seen("b", LAT, LNG, T0)
    cell.depart("a", T0)
    cell.depart("b", T0 + 60)
    assert set(cell.departed_until) == {"b"}


def test_the_cell_hears_of_every_api_event_that_changes_what_it_reads():
    """Events the API applies (not the cell's own: assignment, a driver's reports) reach the cell exactly when
    they cancel the order or move its ready time."""
    applied_by_api = [e for e, rule in TRANSITIONS.items()
                      if {Actor.CUSTOMER, Actor.RESTAURANT} & rule.actors and Actor.DRIVER not in rule.actors]
    assert applied_by_api
    for event in applied_by_api:
        changes_what_the_cell_reads = TRANSITIONS[event].cancels or "ready" in EVENT_EFFECTS[event]
        assert (event in CELL_NOTICES) == changes_what_the_cell_reads, event
    assert CELL_NOTICES[Event.CANCEL] == "cancelled"
