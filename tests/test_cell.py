"""The sans-I/O cell: offers, acceptance, declines, expiry, lost drivers, cancellations."""

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dispatch.cell import (
    CellCore, CellError, CellParams, LiveOrder, OrderPhase, PersistAssignment, PersistOrderEvent, SendToDriver,
)
from dispatch.lifecycle import PHASE_DRIVER, DriverEvent, DriverStatus
from dispatch.matcher import Drivers, MatchParams, Orders, TravelModel, match

LAT, LNG = 41.88, -87.63
T0 = 1_800_000_000.0


def order(oid: int, now: float = T0, ready_in_s: float = 0.0, dlat: float = 0.0) -> LiveOrder:
    return LiveOrder(oid, restaurant_id=oid, restaurant_lat=LAT + dlat, restaurant_lng=LNG,
                     dropoff_lat=LAT + dlat + 0.01, dropoff_lng=LNG + 0.01, placed_at=now, ready_at=now + ready_in_s)


def offers_of(commands, driver_id=None):
    return [c.message for c in commands if isinstance(c, SendToDriver) and c.message["type"] == "offer"
            and (driver_id is None or c.driver_id == driver_id)]


def test_offer_accept_deliver():
    cell = CellCore("c1")
    cell.driver_seen("near", LAT + 0.001, LNG, T0)
    cell.driver_seen("far", LAT + 0.05, LNG, T0)
    cell.add_order(order(1))
    commands = cell.tick(T0)
    [offer] = offers_of(commands)
    assert offers_of(commands, "near") == [offer]
    assert [o["order_id"] for o in offer["orders"]] == [1]
    assert cell.drivers["near"].status is DriverStatus.OFFERED
    [persist] = cell.accept("near", offer["offer_id"], T0 + 5)
    assert isinstance(persist, PersistAssignment) and persist.order_ids == (1,)
    with pytest.raises(CellError):
        cell.job_event("near", persist.job_id, DriverEvent.ARRIVE)  # not confirmed yet
    [assigned] = cell.assignment_persisted(persist.job_id, ok=True)
    assert assigned.message["type"] == "assigned"
    assert [c.event for c in cell.job_event("near", persist.job_id, DriverEvent.ARRIVE)] == ["arrive"]
    assert [c.event for c in cell.job_event("near", persist.job_id, DriverEvent.PICK_UP)] == ["pick_up"]
    [deliver] = cell.delivered("near", 1)
    assert isinstance(deliver, PersistOrderEvent) and deliver.event == "deliver"
    assert cell.drivers["near"].status is DriverStatus.IDLE and not cell.jobs and not cell.orders


def test_decline_goes_to_the_next_driver_and_never_back():
    cell = CellCore("c1")
    cell.driver_seen("a", LAT + 0.001, LNG, T0)
    cell.driver_seen("b", LAT + 0.02, LNG, T0)
    cell.add_order(order(1))
    [offer] = offers_of(cell.tick(T0), "a")
    cell.decline("a", offer["offer_id"], T0 + 1)
    assert cell.drivers["a"].status is DriverStatus.IDLE
    commands = cell.tick(T0 + 2)
    assert offers_of(commands, "a") == [] and len(offers_of(commands, "b")) == 1


def test_offer_expiry_moves_on():
    cell = CellCore("c1", CellParams(offer_ttl_s=10))
    cell.driver_seen("a", LAT, LNG, T0)
    cell.driver_seen("b", LAT + 0.02, LNG, T0)
    cell.add_order(order(1))
    [offer] = offers_of(cell.tick(T0), "a")
    for t in (T0 + 5, T0 + 9):
        cell.driver_seen("a", LAT, LNG, t)
        cell.driver_seen("b", LAT + 0.02, LNG, t)
    commands = cell.tick(T0 + 11)
    withdrawn = [c for c in commands if isinstance(c, SendToDriver) and c.message["type"] == "offer_withdrawn"]
    assert [c.driver_id for c in withdrawn] == ["a"]
    assert len(offers_of(commands, "b")) == 1
    with pytest.raises(CellError):
        cell.accept("a", offer["offer_id"], T0 + 12)


def test_lost_driver_orders_are_redispatched():
    cell = CellCore("c1", CellParams(heartbeat_ttl_s=30))
    cell.driver_seen("a", LAT, LNG, T0)
    cell.add_order(order(1))
    [offer] = offers_of(cell.tick(T0))
    [persist] = cell.accept("a", offer["offer_id"], T0 + 1)
    cell.assignment_persisted(persist.job_id, ok=True)
    cell.driver_seen("b", LAT + 0.01, LNG, T0 + 40)
    commands = cell.tick(T0 + 40)
    assert [(c.order_id, c.event) for c in commands if isinstance(c, PersistOrderEvent)] == [(1, "unassign")]
    assert cell.drivers["a"].status is DriverStatus.OFFLINE
    assert len(offers_of(commands, "b")) == 1
    # The lost driver comes back online and is dispatchable again.
    cell.driver_seen("a", LAT, LNG, T0 + 50)
    assert cell.drivers["a"].status is DriverStatus.IDLE


def test_refused_assignment_releases_driver_and_orders():
    cell = CellCore("c1")
    cell.driver_seen("a", LAT, LNG, T0)
    cell.add_order(order(1))
    [offer] = offers_of(cell.tick(T0))
    [persist] = cell.accept("a", offer["offer_id"], T0 + 1)
    [withdrawn] = cell.assignment_persisted(persist.job_id, ok=False, reason="version conflict")
    assert withdrawn.message["type"] == "job_withdrawn"
    assert cell.drivers["a"].status is DriverStatus.IDLE and cell.orders[1].phase is OrderPhase.PENDING


def test_cancellation_withdraws_offer_or_recalls_driver():
    cell = CellCore("c1")
    cell.driver_seen("a", LAT, LNG, T0)
    cell.driver_seen("b", LAT + 0.3, LNG, T0)
    cell.add_order(order(1))
    cell.add_order(order(2, dlat=0.3))
    commands = cell.tick(T0)
    offer_a, offer_b = offers_of(commands, "a")[0], offers_of(commands, "b")[0]
    [msg] = cell.withdraw_order(1, "cancelled by customer")
    assert msg.message["type"] == "offer_withdrawn" and cell.drivers["a"].status is DriverStatus.IDLE
    [persist] = cell.accept("b", offer_b["offer_id"], T0 + 1)
    cell.assignment_persisted(persist.job_id, ok=True)
    [recall] = cell.withdraw_order(2, "cancelled by customer")
    assert recall.message == {"type": "cancelled", "order_id": 2, "reason": "cancelled by customer"}
    assert cell.drivers["b"].status is DriverStatus.IDLE and not cell.jobs


def test_bad_driver_inputs_are_refused_without_changing_state():
    cell = CellCore("c1")
    with pytest.raises(CellError):
        cell.accept("ghost", "offer-x", T0)
    cell.driver_seen("a", LAT, LNG, T0)
    with pytest.raises(CellError):
        cell.accept("a", "offer-x", T0)
    with pytest.raises(CellError):
        cell.delivered("a", 5)
    assert cell.drivers["a"].status is DriverStatus.IDLE


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_days_keep_the_invariants(seed):
    rng = random.Random(seed)
    cell = CellCore("c1", CellParams(offer_ttl_s=15, heartbeat_ttl_s=25))
    now, next_order = T0, 1
    drivers = [f"d{i}" for i in range(rng.randint(1, 6))]
    for step in range(120):
        now += rng.uniform(0.5, 4)
        for d in drivers:
            if rng.random() < 0.8:
                cell.driver_seen(d, LAT + rng.uniform(-0.02, 0.02), LNG + rng.uniform(-0.02, 0.02), now)
        if rng.random() < 0.3:
            cell.add_order(order(next_order, now, rng.uniform(0, 900), dlat=rng.uniform(-0.02, 0.02)))
            next_order += 1
        busy = {d.id for d in cell.drivers.values() if d.job_id is not None}
        commands = cell.tick(now)
        assert not {c.driver_id for c in commands if isinstance(c, SendToDriver) and c.message["type"] == "offer"} \
            & busy, "an offer went to a busy driver"
        for c in list(commands):
            if isinstance(c, SendToDriver) and c.message["type"] == "offer":
                roll = rng.random()
                if roll < 0.6:
                    commands += cell.accept(c.driver_id, c.message["offer_id"], now)
                elif roll < 0.8:
                    commands += cell.decline(c.driver_id, c.message["offer_id"], now)
            if isinstance(c, PersistAssignment):
                cell.assignment_persisted(c.job_id, ok=rng.random() < 0.9)
        for job in list(cell.jobs.values()):
            driver = cell.drivers[job.driver_id]
            if any(cell.orders[i].phase is OrderPhase.ASSIGNING for i in job.order_ids):
                continue
            try:
                if driver.status is DriverStatus.EN_ROUTE and rng.random() < 0.5:
                    cell.job_event(driver.id, job.id, DriverEvent.ARRIVE)
                elif driver.status is DriverStatus.AT_RESTAURANT and rng.random() < 0.5:
                    cell.job_event(driver.id, job.id, DriverEvent.PICK_UP)
                elif driver.status is DriverStatus.DELIVERING:
                    cell.delivered(driver.id, next(i for i in job.order_ids if i not in job.delivered))
            except CellError:
                pytest.fail("a legal driver report was refused")
        if cell.orders and rng.random() < 0.05:
            cell.withdraw_order(rng.choice(sorted(cell.orders)), "cancelled")
        check_invariants(cell)


def check_invariants(cell: CellCore) -> None:
    holders: dict[int, str] = {}
    for offer in cell.offers.values():
        assert cell.drivers[offer.driver_id].status is DriverStatus.OFFERED
        assert cell.drivers[offer.driver_id].offer_id == offer.id
        for oid in offer.order_ids:
            assert oid not in holders, "order in two offers or jobs"
            holders[oid] = offer.id
            assert cell.orders[oid].phase is OrderPhase.OFFERED
    for job in cell.jobs.values():
        driver = cell.drivers[job.driver_id]
        assert driver.job_id == job.id
        assert driver.status in (DriverStatus.EN_ROUTE, DriverStatus.AT_RESTAURANT, DriverStatus.DELIVERING)
        for oid in set(job.order_ids) - job.delivered:
            assert oid not in holders, "order in two offers or jobs"
            holders[oid] = job.id
            assert cell.orders[oid].driver_id == job.driver_id
    for driver in cell.drivers.values():
        assert (driver.status is DriverStatus.OFFERED) == (driver.offer_id is not None)
        if driver.status in (DriverStatus.IDLE, DriverStatus.OFFLINE):
            assert driver.job_id is None
    for order in cell.orders.values():
        if order.phase is OrderPhase.PENDING:
            assert order.id not in holders
        else:
            assert order.id in holders
            holder = cell.offers[holders[order.id]].driver_id if order.phase is OrderPhase.OFFERED else order.driver_id
            assert cell.drivers[holder].status in PHASE_DRIVER[order.phase], "phase and driver status disagree"


def test_nearest_idle_and_unoffered():
    cell = CellCore("c1")
    cell.driver_seen("far", LAT + 0.02, LNG, T0)
    cell.driver_seen("near", LAT + 0.001, LNG, T0)
    cell.driver_seen("busy", LAT, LNG, T0)
    cell.drivers["busy"].status = DriverStatus.OFFERED
    assert cell.nearest_idle(LAT, LNG, 5000).id == "near"
    assert cell.nearest_idle(LAT, LNG, 50) is None
    cell.add_order(order(1, now=T0))
    cell.add_order(order(2, now=T0 + 5))
    assert [o.id for o in cell.unoffered_orders(T0 + 6, older_than_s=3)] == [1]


# Busy drivers: matched from the end of their job, as the offline replay does; offers go to idle ones only.


def test_order_waits_for_a_busy_driver_soon_free_nearby_as_the_offline_matcher_decides():
    cell = CellCore("c1")
    cell.driver_seen("busy", LAT + 0.004, LNG, T0)
    cell.add_order(LiveOrder(1, restaurant_id=1, restaurant_lat=LAT + 0.004, restaurant_lng=LNG,
                             dropoff_lat=LAT + 0.002, dropoff_lng=LNG, placed_at=T0, ready_at=T0))
    [offer] = offers_of(cell.tick(T0), "busy")
    [persist] = cell.accept("busy", offer["offer_id"], T0 + 1)
    cell.assignment_persisted(persist.job_id, ok=True)
    cell.job_event("busy", persist.job_id, DriverEvent.ARRIVE)
    cell.job_event("busy", persist.job_id, DriverEvent.PICK_UP)
    now = T0 + 60
    cell.driver_seen("busy", LAT + 0.003, LNG, now)  # on its way to the door, 220 m from the restaurant below
    cell.driver_seen("far", LAT + 0.05, LNG, now)  # idle, 5.6 km away: 13 minutes
    cell.add_order(order(2, now))  # ready now
    commands = cell.tick(now)
    assert offers_of(commands) == []
    assert cell.orders[2].phase is OrderPhase.PENDING and cell.orders[2].held
    assert cell.unoffered_orders(now + 60, older_than_s=3) == []  # held: no neighbour's driver is borrowed

    # The offline matcher, on the same situation written out by hand, decides the same.
    travel = TravelModel.great_circle(CellParams().speed_kmh)
    minute = now / 60
    busy_free = minute + travel.minutes(LNG, LAT + 0.003, LNG, LAT + 0.002)
    drivers = Drivers(x=np.array([LNG, LNG]), y=np.array([LAT + 0.05, LAT + 0.002]),
                      free_at=np.array([minute, busy_free]), capacity=np.array([1, 1]),
                      shift_end=np.full(2, np.inf))
    o = cell.orders[2]
    orders = Orders(restaurant_x=np.array([o.restaurant_lng]), restaurant_y=np.array([o.restaurant_lat]),
                    drop_x=np.array([o.dropoff_lng]), drop_y=np.array([o.dropoff_lat]),
                    placed_at=np.array([minute]), ready_at=np.array([minute]), restaurant_id=np.array([2]))
    offline = match(minute, drivers, orders, travel, MatchParams())
    assert offline.jobs == [] and offline.order_held.tolist() == [True]
    # Seeing idle drivers only (as cells used to), the far driver would have been sent.
    idle_only = match(minute, drivers, orders, travel, MatchParams(lookahead=0.0))
    assert idle_only.jobs == [(0, [0])]

    # Once the busy driver has delivered, the order goes to it, not to the far driver.
    cell.delivered("busy", 1)
    commands = cell.tick(now + 30)
    assert len(offers_of(commands, "busy")) == 1 and offers_of(commands, "far") == []
    assert not cell.orders[2].held
    [offered] = offers_of(commands, "busy")[0]["orders"]
    assert offered["waited_s"] == {"queued": 0.0, "held": 30.0}, "the offer says how long it was held on purpose"


def _busy_cell(seed: int, params: CellParams):
    """A cell with random idle drivers, busy drivers (en route, at the restaurant, delivering) and pending orders."""
    rng = random.Random(seed)
    cell = CellCore("c1", params)
    now = T0 + 600
    spot = lambda: (LAT + rng.uniform(-0.03, 0.03), LNG + rng.uniform(-0.03, 0.03))
    next_order = 1
    for i in range(rng.randint(0, 6)):
        status = rng.choice([DriverStatus.EN_ROUTE, DriverStatus.AT_RESTAURANT, DriverStatus.DELIVERING])
        (rlat, rlng), n = spot(), rng.randint(1, 3)
        job = []
        for _ in range(n):
            dlat, dlng = spot()
            job.append(LiveOrder(next_order, restaurant_id=1000 + i, restaurant_lat=rlat, restaurant_lng=rlng,
                                 dropoff_lat=dlat, dropoff_lng=dlng, placed_at=now - 600,
                                 ready_at=now + rng.uniform(-300, 600)))
            next_order += 1
        cell.restore_job(f"job-{i}", f"busy{i}", job, picked_up=status is DriverStatus.DELIVERING,
                         at_restaurant=status is DriverStatus.AT_RESTAURANT, now=now)
        cell.driver_seen(f"busy{i}", *spot(), now, capacity=rng.randint(1, 3))
    for i in range(rng.randint(0, 6)):
        cell.driver_seen(f"idle{i}", *spot(), now, capacity=rng.randint(1, 3))
    for _ in range(rng.randint(1, 12)):
        (rlat, rlng), (dlat, dlng) = spot(), spot()
        cell.add_order(LiveOrder(next_order, restaurant_id=rng.randint(1, 4), restaurant_lat=rlat, restaurant_lng=rlng,
                                 dropoff_lat=dlat, dropoff_lng=dlng, placed_at=now - rng.uniform(0, 900),
                                 ready_at=now + rng.uniform(-600, 1200)))
        next_order += 1
    return cell, now


def _by_hand_free_at(cell: CellCore, driver, now: float) -> tuple[float, float, float]:
    """When and where a busy driver is free, worked out leg by leg (minutes; lng, lat)."""
    travel, p = cell.travel, cell.params.match
    job = cell.jobs[driver.job_id]
    orders = [cell.orders[i] for i in job.order_ids]
    t, x, y = now / 60, driver.lng, driver.lat
    if driver.status is not DriverStatus.DELIVERING:
        r = orders[0]
        t = max(t + travel.minutes(x, y, r.restaurant_lng, r.restaurant_lat) + p.pickup_lead,
                max(o.ready_at for o in orders) / 60) + p.pickup_exit
        x, y = r.restaurant_lng, r.restaurant_lat
    for o in orders:
        t += travel.minutes(x, y, o.dropoff_lng, o.dropoff_lat) + p.dropoff_service
        x, y = o.dropoff_lng, o.dropoff_lat
    return max(t, math.nextafter(now / 60, math.inf)), x, y


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lookahead=st.sampled_from([0.0, 5.0, 20.0]))
def test_a_tick_decides_as_the_offline_matcher_and_offers_only_to_idle_drivers(seed, lookahead):
    params = CellParams(match=MatchParams(lookahead=lookahead, pickup_lead=1.0, pickup_exit=1.0, dropoff_service=2.0))
    cell, now = _busy_cell(seed, params)
    idle = [d for d in cell.drivers.values() if d.status is DriverStatus.IDLE]
    busy = [d for d in cell.drivers.values() if d.job_id is not None]
    pending = [o for o in cell.orders.values() if o.phase is OrderPhase.PENDING]
    ends = [_by_hand_free_at(cell, d, now) for d in busy]
    drivers = Drivers(
        x=np.array([d.lng for d in idle] + [e[1] for e in ends]),
        y=np.array([d.lat for d in idle] + [e[2] for e in ends]),
        free_at=np.array([now / 60] * len(idle) + [e[0] for e in ends]),
        capacity=np.array([d.capacity for d in idle + busy], np.int64),
        shift_end=np.full(len(idle) + len(busy), np.inf))
    column = lambda f: np.array([f(o) for o in pending])
    orders = Orders(
        restaurant_x=column(lambda o: o.restaurant_lng), restaurant_y=column(lambda o: o.restaurant_lat),
        drop_x=column(lambda o: o.dropoff_lng), drop_y=column(lambda o: o.dropoff_lat),
        placed_at=column(lambda o: o.placed_at / 60), ready_at=column(lambda o: o.ready_at / 60),
        restaurant_id=column(lambda o: o.restaurant_id))
    offline = match(now / 60, drivers, orders, cell.travel, params.match)
    was_busy = {d.id for d in busy}

    commands = cell.tick(now)

    offered = {(c.driver_id, tuple(o["order_id"] for o in c.message["orders"])) for c in commands
               if isinstance(c, SendToDriver) and c.message["type"] == "offer"}
    assert not {d for d, _ in offered} & was_busy, "an offer went to a busy driver"
    assert all(driver < len(idle) for driver, _ in offline.jobs)
    assert offered == {(idle[d].id, tuple(pending[i].id for i in job)) for d, job in offline.jobs}
    assert [o.held for o in pending] == offline.order_held.tolist()
    assert all(cell.drivers[d].status is DriverStatus.OFFERED for d, _ in offered)
    assert all(cell.drivers[d].status is not DriverStatus.OFFERED for d in was_busy)
    check_invariants(cell)


def test_no_order_waits_for_a_silent_busy_driver():
    cell = CellCore("c1", CellParams(heartbeat_ttl_s=30))
    cell.restore_job("job-1", "busy", [order(1)], picked_up=True, at_restaurant=False, now=T0)
    cell.driver_seen("busy", LAT + 0.001, LNG, T0)
    cell.add_order(order(2, T0 + 20))
    assert offers_of(cell.tick(T0 + 20)) == [] and cell.orders[2].held
    cell.driver_seen("far", LAT + 0.05, LNG, T0 + 40)
    commands = cell.tick(T0 + 40)  # "busy" has been silent for 40 s, with the food still in its bag
    assert cell.drivers["busy"].status is DriverStatus.DELIVERING
    assert len(offers_of(commands, "far")) == 1 and not cell.orders[2].held


# Why an order waited: charged per reason and sent with its offer (the peak bench separates deliberate waits).


def test_an_order_offered_at_once_waited_only_to_be_considered():
    cell = CellCore("c1")
    cell.driver_seen("near", LAT + 0.001, LNG, T0)
    cell.add_order(order(1))
    [offer] = offers_of(cell.tick(T0 + 0.25))
    assert offer["orders"][0]["waited_s"] == {"queued": 0.25}


def test_an_order_whose_food_is_far_from_ready_is_deferred_then_offered():
    cell = CellCore("c1")
    cell.driver_seen("near", LAT + 0.001, LNG, T0)
    cell.add_order(order(1, ready_in_s=600))
    for now in range(int(T0), int(T0) + 480, 20):
        cell.driver_seen("near", LAT + 0.001, LNG, now)
        assert offers_of(cell.tick(now)) == []
        assert cell.orders[1].wait_reason == "deferred"
    cell.driver_seen("near", LAT + 0.001, LNG, T0 + 480)
    # Ready in 2 minutes, a 16-second drive away: slack under the 2-minute commit window.
    [offer] = offers_of(cell.tick(T0 + 480))
    assert offer["orders"][0]["waited_s"] == {"queued": 0.0, "deferred": 480.0}


def test_an_order_with_no_driver_in_the_cell_is_unmatched_until_one_comes():
    cell = CellCore("c1")
    cell.add_order(order(1))
    assert offers_of(cell.tick(T0 + 1)) == []
    assert cell.orders[1].wait_reason == "unmatched"
    cell.driver_seen("late", LAT + 0.001, LNG, T0 + 5)
    [offer] = offers_of(cell.tick(T0 + 6))
    assert offer["orders"][0]["waited_s"] == {"queued": 1.0, "unmatched": 5.0}
