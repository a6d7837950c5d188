"""The cell's repairs after failed writes (sans I/O): rolling a decision back, and agreeing with Postgres."""

import pytest

from dispatch.cell import CellCore, CellError, OrderPhase, PersistAssignment, PersistOrderEvent, SendToDriver, StoredOrder
from dispatch.lifecycle import DriverEvent, DriverStatus, IllegalDriverTransition
from tests.test_cell import LAT, LNG, T0, offers_of, order


def messages(commands, kind):
    return [(c.driver_id, c.message) for c in commands if isinstance(c, SendToDriver) and c.message["type"] == kind]


def unassigns(commands):
    return [(c.order_id, c.driver_id, c.reason) for c in commands
            if isinstance(c, PersistOrderEvent) and c.event == "unassign"]


def stored(oid, courier="unassigned", driver=None, job=None, cancelled=False):
    return StoredOrder(order(oid), courier, driver, job, cancelled)


def accepted(cell: CellCore, driver="a", oid=1) -> PersistAssignment:
    """A cell whose driver accepted an offer of order ``oid``: the assignment is being written."""
    cell.driver_seen(driver, LAT + 0.001, LNG, T0)
    cell.add_order(order(oid))
    [offer] = offers_of(cell.tick(T0), driver)
    [persist] = cell.accept(driver, offer["offer_id"], T0 + 1)
    return persist


def test_a_failed_assignment_rolls_back_order_and_driver_and_tells_the_driver():
    cell = CellCore("c1")
    persist = accepted(cell)
    [withdrawn] = messages(cell.assignment_persisted(persist.job_id, False, "unavailable"), "job_withdrawn")
    assert withdrawn == ("a", {"type": "job_withdrawn", "job_id": persist.job_id, "reason": "unavailable"})
    assert cell.orders[1].phase is OrderPhase.PENDING and cell.orders[1].driver_id is None
    assert cell.drivers["a"].status is DriverStatus.IDLE and cell.drivers["a"].job_id is None and not cell.jobs
    # Not a decline: the same driver may be offered the order again.
    assert [o["orders"][0]["order_id"] for o in offers_of(cell.tick(T0 + 2), "a")] == [1]


def test_a_report_is_checked_without_changing_anything():
    cell = CellCore("c1")
    persist = accepted(cell)
    cell.assignment_persisted(persist.job_id, True)
    [arrive] = cell.check_job_event("a", persist.job_id, DriverEvent.ARRIVE)
    assert (arrive.order_id, arrive.event) == (1, "arrive")
    assert cell.drivers["a"].status is DriverStatus.EN_ROUTE  # unchanged until Postgres has it
    with pytest.raises(IllegalDriverTransition):
        cell.check_job_event("a", persist.job_id, DriverEvent.PICK_UP)  # not at the restaurant yet
    with pytest.raises(CellError):
        cell.check_delivered("a", 1)
    cell.job_event("a", persist.job_id, DriverEvent.ARRIVE)
    cell.job_event("a", persist.job_id, DriverEvent.PICK_UP)
    assert [c.event for c in cell.check_delivered("a", 1)] == ["deliver"]
    assert cell.orders[1].phase is OrderPhase.PICKED_UP and cell.jobs


def test_reconcile_rolls_back_a_stuck_assignment_postgres_never_recorded():
    cell = CellCore("c1")
    persist = accepted(cell)
    assert cell.reconcile([stored(1)], unsettled={1}, now=T0 + 2) == []  # still being written: left alone
    commands = cell.reconcile([stored(1)], unsettled=set(), now=T0 + 2)
    assert [m["job_id"] for _, m in messages(commands, "job_withdrawn")] == [persist.job_id]
    assert cell.orders[1].phase is OrderPhase.PENDING and cell.drivers["a"].status is DriverStatus.IDLE


def test_reconcile_confirms_a_stuck_assignment_postgres_did_record():
    cell = CellCore("c1")
    persist = accepted(cell)
    commands = cell.reconcile([stored(1, "assigned", "a", persist.job_id)], unsettled=set(), now=T0 + 2)
    assert [m["job_id"] for _, m in messages(commands, "assigned")] == [persist.job_id]
    assert cell.orders[1].phase is OrderPhase.ASSIGNED and cell.drivers["a"].status is DriverStatus.EN_ROUTE


def test_reconcile_releases_an_assignment_only_postgres_holds():
    """A commit that looked failed: the cell rolled back (the driver was told), Postgres kept it."""
    cell = CellCore("c1")
    persist = accepted(cell)
    cell.assignment_persisted(persist.job_id, False, "unavailable")
    commands = cell.reconcile([stored(1, "assigned", "a", persist.job_id)], unsettled=set(), now=T0 + 2)
    assert unassigns(commands) == [(1, "a", "assignment not confirmed")]
    assert cell.orders[1].phase is OrderPhase.PENDING
    # Unknown to the cell altogether (e.g. lost with a failed write): dispatched again, released in Postgres.
    fresh = CellCore("c1")
    commands = fresh.reconcile([stored(2, "at_restaurant", "b", "job-x")], unsettled=set(), now=T0)
    assert unassigns(commands) == [(2, "b", "assignment not confirmed")] and fresh.orders[2].phase is OrderPhase.PENDING


def test_reconcile_never_releases_food_in_a_bag_but_adopts_the_job():
    cell = CellCore("c1")
    commands = cell.reconcile([stored(3, "picked_up", "b", "job-y")], unsettled=set(), now=T0)
    assert unassigns(commands) == []
    assert cell.orders[3].phase is OrderPhase.PICKED_UP and cell.jobs["job-y"].order_ids == [3]
    assert cell.drivers["b"].status is DriverStatus.DELIVERING


def test_reconcile_dispatches_orders_it_missed_and_takes_back_ones_postgres_unassigned():
    cell = CellCore("c1")
    persist = accepted(cell)
    cell.assignment_persisted(persist.job_id, True)
    commands = cell.reconcile([stored(1), stored(7)], unsettled=set(), now=T0 + 2)
    assert messages(commands, "cancelled") == [("a", {"type": "cancelled", "order_id": 1, "reason": "reassigned"})]
    assert cell.orders[1].phase is OrderPhase.PENDING and cell.orders[7].phase is OrderPhase.PENDING
    assert cell.drivers["a"].status is DriverStatus.IDLE and not cell.jobs


def test_reconcile_drops_orders_finished_in_postgres():
    cell = CellCore("c1")
    persist = accepted(cell)
    cell.assignment_persisted(persist.job_id, True)
    cell.add_order(order(2))
    commands = cell.reconcile([stored(1, "assigned", "a", persist.job_id, cancelled=True), stored(2, cancelled=True)],
                              unsettled=set(), now=T0 + 2)
    assert messages(commands, "cancelled") == [("a", {"type": "cancelled", "order_id": 1, "reason": "cancelled"})]
    assert not cell.orders and not cell.jobs and cell.drivers["a"].status is DriverStatus.IDLE
    # Delivered in Postgres while the cell still had it in the bag: delivered here too.
    persist = accepted(cell, oid=5)
    cell.assignment_persisted(persist.job_id, True)
    cell.job_event("a", persist.job_id, DriverEvent.ARRIVE)
    cell.job_event("a", persist.job_id, DriverEvent.PICK_UP)
    assert cell.reconcile([stored(5, "delivered", "a", persist.job_id)], unsettled=set(), now=T0 + 3) == []
    assert not cell.orders and not cell.jobs and cell.drivers["a"].status is DriverStatus.IDLE


def test_reconcile_leaves_agreeing_state_alone():
    cell = CellCore("c1")
    persist = accepted(cell)
    cell.assignment_persisted(persist.job_id, True)
    cell.add_order(order(2))
    rows = [stored(1, "assigned", "a", persist.job_id), stored(2)]
    assert cell.reconcile(rows, unsettled=set(), now=T0 + 2) == []
    assert cell.orders[1].phase is OrderPhase.ASSIGNED and cell.orders[2].phase is OrderPhase.PENDING


def test_a_restored_job_not_yet_started_is_announced_to_its_driver_once():
    """A cell rebuilt from Postgres (its node was lost) holds a job whose ``assigned`` may have died with the old
    cell: the driver is told when it shows up again, once; a job the driver has started is not announced."""
    cell = CellCore("c1")
    cell.restore_job("job-1", "a", [order(1)], picked_up=False, at_restaurant=False, now=T0)
    cell.restore_job("job-2", "b", [order(2)], picked_up=False, at_restaurant=True, now=T0)
    assert cell.announce_restored("nobody") == []
    cell.driver_seen("a", LAT, LNG, T0 + 5)
    [told] = messages(cell.announce_restored("a"), "assigned")
    assert told[0] == "a" and told[1]["job_id"] == "job-1" and [o["order_id"] for o in told[1]["orders"]] == [1]
    assert cell.announce_restored("a") == []  # once
    cell.driver_seen("b", LAT, LNG, T0 + 5)
    assert cell.announce_restored("b") == []  # at the restaurant: it has the job


def test_a_job_assigned_by_this_cell_is_never_announced_again():
    cell = CellCore("c1")
    persist = accepted(cell)
    assert messages(cell.assignment_persisted(persist.job_id, True), "assigned")
    cell.driver_seen("a", LAT, LNG, T0 + 2)
    assert cell.announce_restored("a") == []
