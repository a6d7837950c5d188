"""``dispatch.routing``: where a front door routes a driver, hand-over timing and the double-booking guard."""

from __future__ import annotations

from dispatch.routing import Routing, handover_due, hold_after_borrow, route_cell_message


def test_the_holding_cell_delivers():
    for kind in ("offer", "assigned", "cancelled", "job_withdrawn"):
        assert route_cell_message(kind, "A", "A", connected=True, holds_orders=True) is Routing.DELIVER


def test_work_from_another_cell_means_it_borrowed_the_driver():
    assert route_cell_message("offer", "B", "A", connected=True, holds_orders=False) is Routing.ADOPT_THEN_DELIVER
    assert route_cell_message("assigned", "B", "A", connected=True, holds_orders=True) is Routing.ADOPT_THEN_DELIVER
    # not work: passed on as it is, the home stays
    assert route_cell_message("cancelled", "B", "A", connected=True, holds_orders=True) is Routing.DELIVER


def test_an_offer_to_a_driver_busy_elsewhere_is_declined_not_double_booked():
    assert route_cell_message("offer", "B", "A", connected=True, holds_orders=True) is Routing.DECLINE_OFFER


def test_a_lend_moves_the_driver_only_when_its_home_lent_it():
    assert route_cell_message("rehome", "A", "A", connected=True, holds_orders=False) is Routing.FOLLOW_REHOME
    assert route_cell_message("rehome", "C", "A", connected=True, holds_orders=False) is Routing.POLL_BORROWER
    assert route_cell_message("rehome", "A", None, connected=False, holds_orders=False) is Routing.POLL_BORROWER


def test_a_driver_without_a_socket_here_is_never_moved():
    for kind in ("offer", "assigned"):
        assert route_cell_message(kind, "B", None, connected=False, holds_orders=False) is Routing.DELIVER


def test_handover_waits_for_the_retry_interval_and_a_borrow_holds_longer():
    retry, hold = 5.0, 30.0
    assert not handover_due(None, "B", 100.0, 0.0, retry)  # no home yet: the fix homes it
    assert not handover_due("A", "A", 100.0, 0.0, retry)
    assert handover_due("A", "B", 100.0, 95.0, retry)
    assert not handover_due("A", "B", 100.0, 95.1, retry)
    last_try = hold_after_borrow(100.0, retry, hold)
    assert not handover_due("B", "A", 129.9, last_try, retry)
    assert handover_due("B", "A", 130.0, last_try, retry)
