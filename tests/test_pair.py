"""Dispatch scenarios through the in-memory pair (``tests/pair.py``): wire frames, no sockets, a passed clock."""

import random

from hypothesis import given, settings, strategies as st

import wire
from dispatch.cell import CellParams
from dispatch.lifecycle import DriverStatus, Event
from tests.events import gapless, lifecycle
from tests.pair import Pair
from tests.test_cell import check_invariants


def offered(pair: Pair, driver_id: str) -> dict:
    return pair.drivers[driver_id].last("offer")


def test_offer_accept_and_the_whole_delivery():
    pair = Pair()
    pair.gps("a")
    customer = pair.place(1)
    pair.advance(0.1)
    offer = offered(pair, "a")
    pair.send("a", wire.AcceptOffer(offer_id=offer["offer_id"], id="m1"))
    app = pair.drivers["a"]
    assert app.last("ack") == {"type": "ack", "of": "accept", "re": "m1", "offer_id": offer["offer_id"],
                               "job_id": None, "order_id": None}
    job_id = app.last("assigned")["job_id"]
    pair.advance(0.1)
    for frame in (wire.AtRestaurant(job_id=job_id), wire.PickedUp(job_id=job_id), wire.Delivered(order_id=1)):
        pair.send("a", frame)
        assert app.inbox[-1]["type"] == "ack", app.inbox[-1]
        pair.advance(0.1)
    assert [(s["event"], s["status"]) for s in lifecycle(customer.of("status"))] == [
        ("placed", "placed"), ("assign", "driver_assigned"), ("arrive", "at_restaurant"),
        ("pick_up", "picked_up"), ("deliver", "delivered")]
    assert gapless(customer.of("status"))
    estimates = [s for s in customer.of("status") if s["event"] == "estimate"]
    # The promise at placement, the courier's plan once assigned, the food on board once picked up.
    assert [s["eta"]["basis"] for s in estimates] == ["queue", "job", "on_board"]
    assert all(s["eta"] == s["payload"] for s in estimates)


def test_an_unanswered_offer_expires_after_its_ttl_and_goes_to_the_next_driver():
    pair = Pair(CellParams(offer_ttl_s=20.0, heartbeat_ttl_s=300.0))
    pair.gps("a", 0.001)
    pair.place(1)
    pair.advance(0.1)
    offer = offered(pair, "a")
    assert offer["expires_at"] == pair.now + 20.0
    pair.gps("b", 0.002)
    pair.advance(19.0)
    assert not pair.drivers["a"].of("offer_withdrawn")
    pair.advance(1.5)
    assert pair.drivers["a"].last("offer_withdrawn") == {"type": "offer_withdrawn", "offer_id": offer["offer_id"],
                                                         "reason": "expired"}
    pair.send("a", wire.AcceptOffer(offer_id=offer["offer_id"], id="late"))
    late = pair.drivers["a"].last("error")
    assert (late["code"], late["re"], late["retryable"]) == ("unknown_offer", "late", False)
    pair.advance(0.1)
    assert [o["order_id"] for o in offered(pair, "b")["orders"]] == [1]


def test_a_late_accept_before_the_tick_is_offer_expired():
    pair = Pair()
    pair.gps("a")
    pair.place(1)
    pair.advance(0.1)
    offer = offered(pair, "a")
    pair.now = offer["expires_at"] + 0.5  # the tick that would withdraw it has not run yet
    pair.send("a", wire.AcceptOffer(offer_id=offer["offer_id"]))
    assert pair.drivers["a"].last("error")["code"] == "offer_expired"


def test_a_declined_order_goes_to_the_next_driver_never_back():
    pair = Pair()
    pair.gps("a", 0.001)
    pair.gps("b", 0.01)
    pair.place(1)
    pair.advance(0.1)
    pair.send("a", wire.DeclineOffer(offer_id=offered(pair, "a")["offer_id"]))
    pair.advance(0.1)
    assert [o["order_id"] for o in offered(pair, "b")["orders"]] == [1]
    pair.send("b", wire.DeclineOffer(offer_id=offered(pair, "b")["offer_id"]))
    pair.advance(5.0)
    assert len(pair.drivers["a"].of("offer")) == 1, "offered back to a driver who declined it"


def test_heartbeat_loss_withdraws_the_job_with_a_reason_and_the_driver_is_matchable_when_it_returns():
    pair = Pair(CellParams(heartbeat_ttl_s=30.0))
    pair.gps("a")
    customer = pair.place(1)
    pair.advance(0.1)
    pair.send("a", wire.AcceptOffer(offer_id=offered(pair, "a")["offer_id"]))
    job_id = pair.drivers["a"].last("assigned")["job_id"]
    pair.send("a", wire.Ping())  # not a heartbeat
    pair.advance(29.0)
    assert not pair.drivers["a"].of("job_withdrawn")
    pair.advance(1.5)
    assert pair.drivers["a"].last("job_withdrawn") == {"type": "job_withdrawn", "job_id": job_id,
                                                       "reason": "driver_lost"}
    assert customer.last("status")["event"] == "unassign"
    assert pair.core.drivers["a"].status is DriverStatus.OFFLINE
    pair.gps("a")  # back: matched on the next tick, to the order it lost
    pair.advance(0.1)
    assert [o["order_id"] for o in offered(pair, "a")["orders"]] == [1]


def test_a_cancellation_racing_an_accept_withdraws_the_job_and_frees_the_driver():
    pair = Pair()
    pair.gps("a")
    customer = pair.place(1)
    pair.advance(0.1)
    pair.hold_writes = True  # the assignment is on its way to the system of record
    pair.send("a", wire.AcceptOffer(offer_id=offered(pair, "a")["offer_id"], id="acc"))
    assert pair.drivers["a"].last("ack")["re"] == "acc"
    pair.send("a", wire.AtRestaurant(job_id=pair.core.drivers["a"].job_id))
    assert pair.drivers["a"].last("error")["code"] == "not_yet_assigned"
    assert wire.is_retryable("not_yet_assigned")
    pair.cancel(1)  # the customer wins the race
    pair.hold_writes = False
    pair.flush()
    assert pair.drivers["a"].last("cancelled") == {"type": "cancelled", "order_id": 1, "reason": "cancelled"}
    assert not pair.drivers["a"].of("assigned"), "the refused assignment must not reach the driver"
    assert pair.core.drivers["a"].status is DriverStatus.IDLE and not pair.core.jobs
    assert [s["event"] for s in lifecycle(customer.of("status"))] == ["placed", "cancel"]


def test_a_restarted_app_resyncs_from_welcome():
    pair = Pair()
    pair.gps("a")
    pair.place(1)
    pair.advance(0.1)
    offer = offered(pair, "a")
    welcome = pair.connect("a").last("welcome")
    assert (welcome["protocol"], welcome["state"], welcome["server_time"]) == (2, "offered", pair.now)
    assert welcome["offer"]["offer_id"] == offer["offer_id"] and welcome["job"] is None
    pair.send("a", wire.AcceptOffer(offer_id=offer["offer_id"]))
    job_id = pair.drivers["a"].last("assigned")["job_id"]
    pair.send("a", wire.AtRestaurant(job_id=job_id))
    welcome = pair.connect("a").last("welcome")
    assert (welcome["state"], welcome["orders"], welcome["offer"]) == ("at_restaurant", [1], None)
    assert (welcome["job"]["job_id"], welcome["job"]["delivered"]) == (job_id, [])
    assert [o["order_id"] for o in welcome["job"]["orders"]] == [1]


def test_status_events_show_the_kitchen_while_a_driver_is_assigned():
    pair = Pair()
    pair.gps("a")
    customer = pair.place(1, ready_in_s=60)
    pair.kitchen(1, Event.ACCEPT)
    pair.advance(0.1)
    pair.send("a", wire.AcceptOffer(offer_id=offered(pair, "a")["offer_id"]))
    pair.kitchen(1, Event.START_PREPARING)
    last = customer.last("status")
    assert (last["status"], last["kitchen_status"], last["courier_status"]) == ("driver_assigned", "preparing",
                                                                               "assigned")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_days_through_the_pair_keep_the_invariants_and_deliver(seed):
    """The randomized day of ``tests/test_cell.py``, with every write applied (accept's assignment too), so the
    arrive / pick-up / deliver paths run; drivers answer only through wire frames."""
    rng = random.Random(seed)
    pair = Pair(CellParams(offer_ttl_s=15, heartbeat_ttl_s=25))
    drivers = [f"d{i}" for i in range(rng.randint(1, 6))]
    next_order, delivered = 1, 0
    for _ in range(150):
        pair.now += rng.uniform(0.5, 4)
        for d in drivers:
            if rng.random() < 0.8:
                pair.gps(d, rng.uniform(-0.02, 0.02))
        if rng.random() < 0.3:
            pair.place(next_order, rng.uniform(0, 600), dlat=rng.uniform(-0.02, 0.02))
            next_order += 1
        pair.run(pair.core.tick(pair.now))
        for d in drivers:
            app = pair.drivers.get(d)
            open_offer = pair.core.drivers.get(d) and pair.core.drivers[d].offer_id
            if app is not None and open_offer:
                roll = rng.random()
                if roll < 0.7:
                    pair.send(d, wire.AcceptOffer(offer_id=open_offer))
                elif roll < 0.85:
                    pair.send(d, wire.DeclineOffer(offer_id=open_offer))
        for job in list(pair.core.jobs.values()):
            driver = pair.core.drivers[job.driver_id]
            if rng.random() < 0.5:
                if driver.status is DriverStatus.EN_ROUTE:
                    pair.send(driver.id, wire.AtRestaurant(job_id=job.id))
                elif driver.status is DriverStatus.AT_RESTAURANT:
                    pair.send(driver.id, wire.PickedUp(job_id=job.id))
                elif driver.status is DriverStatus.DELIVERING:
                    order_id = next(i for i in job.order_ids if i not in job.delivered)
                    pair.send(driver.id, wire.Delivered(order_id=order_id))
                    delivered += 1
                reply = pair.drivers[driver.id].inbox[-1]
                assert reply["type"] == "ack", f"a legal driver report was refused: {reply}"
        if pair.core.orders and rng.random() < 0.05:
            order_id = rng.choice(sorted(pair.core.orders))
            if not pair.orders[order_id].terminal and pair.orders[order_id].courier.value in (
                    "unassigned", "assigned", "at_restaurant"):
                pair.cancel(order_id)
        check_invariants(pair.core)
        for order_id, trail in pair.trail.items():
            assert [s.seq for s in trail] == list(range(1, len(trail) + 1))
    assert delivered == sum(o.courier.value == "delivered" for o in pair.orders.values())
    # A day of one driver who declines or lets most offers pass may deliver nothing (seed 53017: 5 offers, 1
    # accepted); a day with several jobs given out must deliver, or the paths after accept never ran.
    jobs_given = sum(len(app.of("assigned")) for app in pair.drivers.values())
    assert delivered > 0 or jobs_given < 3, f"no delivery in a whole day of {jobs_given} jobs"
