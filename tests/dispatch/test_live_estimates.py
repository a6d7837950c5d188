"""Delivery estimates of a live cell (issue 14): given at placement, revised when they move, carried by offers."""

from __future__ import annotations

import dataclasses

import pytest

from bench.mdrp_live import MINUTE_FIELDS
from dispatch.cell import CellCore, CellParams, GiveEstimate, LiveOrder, SendToDriver
from dispatch.eta import JOB_SPREAD, JOB_SPREAD_FLOOR, EtaCalibration, Estimate, live_calibration, plan_estimate
from dispatch.lifecycle import Actor, Courier, DriverEvent, Event, Kitchen, OrderState, allowed, apply
from dispatch.matcher import MatchParams

T0 = 1_800_000_000.0
LAT, LNG = 41.88, -87.63
KM_LAT = 1 / 111.2  # degrees of latitude per km


def cell_with_driver(params: CellParams | None = None, calibration: EtaCalibration | None = None,
                     km_away: float = 1.0) -> CellCore:
    core = CellCore("test", params or CellParams(), calibration)
    core.driver_seen("d1", LAT - km_away * KM_LAT, LNG, T0)
    return core


def order(order_id: int = 1, ready_in_s: float = 60.0, drop_km: float = 2.0, at: float = T0) -> LiveOrder:
    return LiveOrder(order_id, 7, LAT, LNG, LAT + drop_km * KM_LAT, LNG, at, at + ready_in_s)


def give(core: CellCore, commands) -> list[GiveEstimate]:
    """The shell's part: every estimate is stored, so given."""
    given = [c for c in commands if isinstance(c, GiveEstimate)]
    core.estimates_given(given)
    return given


def test_the_promise_at_placement_is_prep_then_travel_uncalibrated():
    """Identity calibration: courier 1 km away (2.4 min at 25 km/h) is there before the food (ready in 10 min);
    the door is 2 km further (4.8 min): drop-off = ready + 4.8 min, with an empty range."""
    core = cell_with_driver()
    core.add_order(order(ready_in_s=600.0))
    [given] = core.estimates(T0, only=1)
    estimate = given.estimate
    assert estimate.basis == "queue" and estimate.given_at == T0
    assert estimate.courier_arrival_at == pytest.approx(T0 + 60 * 1.0 / 25 * 60, abs=2.0)
    assert estimate.pickup_at == pytest.approx(T0 + 600.0)
    assert estimate.dropoff_at == pytest.approx(T0 + 600.0 + 60 * 2.0 / 25 * 60, abs=2.0)
    assert estimate.dropoff_early == estimate.dropoff_at == estimate.dropoff_late


def test_the_live_calibration_gives_a_range_around_the_point_and_never_before_the_food_can_arrive():
    core = cell_with_driver(calibration=live_calibration())
    core.add_order(order(ready_in_s=60.0))
    [given] = core.estimates(T0, only=1)
    e = given.estimate
    floor = T0 + 60.0 + 60 * 2.0 / 25 * 60 - 2.0  # ready, then driven to the door
    assert floor <= e.dropoff_early <= e.dropoff_at <= e.dropoff_late
    assert e.dropoff_late - e.dropoff_early >= 60.0, "a calibrated promise is a range"


def test_no_courier_in_the_cell_still_gets_the_earliest_the_food_allows_and_says_so():
    core = CellCore("test")
    core.add_order(order(ready_in_s=300.0))
    [given] = core.estimates(T0, only=1)
    assert given.estimate.courier_arrival_at is None
    assert given.estimate.dropoff_at == pytest.approx(T0 + 300.0 + 60 * 2.0 / 25 * 60, abs=2.0)


def test_estimates_are_given_again_only_when_they_move_or_change_basis():
    params = CellParams(eta_every_s=15.0, eta_revise_s=120.0)
    core = cell_with_driver(params)
    core.add_order(order(ready_in_s=900.0))  # deferred: no offer for a while
    assert len(give(core, core.estimates(T0, only=1))) == 1
    assert give(core, core.tick(T0 + 1)) == [], "the next pass is eta_every_s away"
    assert give(core, core.tick(T0 + 16)) == [], "nothing moved"
    core.revise_ready(1, T0 + 900.0 + 300.0)  # the kitchen is 5 minutes late: told at the next tick
    [revised] = give(core, core.tick(T0 + 17))
    assert core.orders[1].estimate == revised.estimate
    assert revised.estimate.dropoff_at == pytest.approx(T0 + 1200.0 + 60 * 2.0 / 25 * 60, abs=2.0)


def test_an_estimate_not_stored_is_not_taken_as_given():
    core = cell_with_driver()
    core.add_order(order(ready_in_s=900.0))
    assert core.estimates(T0, only=1)  # the write failed: estimates_given never called
    assert core.orders[1].estimate is None
    assert len(core.estimates(T0 + 20)) == 1, "worked out and offered again at the next pass"


def test_assignment_and_pickup_bring_the_couriers_plan_at_the_next_tick():
    core = cell_with_driver()
    core.add_order(order(ready_in_s=60.0))
    give(core, core.estimates(T0, only=1))
    offer = next(c for c in core.tick(T0 + 0.25) if isinstance(c, SendToDriver)).message
    [persist] = core.accept("d1", offer.offer_id, T0 + 1)
    core.assignment_persisted(persist.job_id, True)
    [plan] = give(core, core.tick(T0 + 1.25))
    e = plan.estimate
    assert e.basis == "job" and e.courier_arrival_at is not None and e.pickup_at >= T0 + 60.0
    remaining_min = (e.dropoff_at - (T0 + 1.25)) / 60
    assert e.dropoff_late - e.dropoff_at == pytest.approx((JOB_SPREAD * remaining_min + JOB_SPREAD_FLOOR) * 60)
    core.driver_seen("d1", LAT, LNG, T0 + 200)
    core.job_event("d1", persist.job_id, DriverEvent.ARRIVE)
    core.job_event("d1", persist.job_id, DriverEvent.PICK_UP)
    [on_board] = give(core, core.tick(T0 + 201))
    assert on_board.estimate.basis == "on_board" and on_board.estimate.pickup_at is None
    assert on_board.estimate.dropoff_at == pytest.approx(T0 + 201 + 60 * 2.0 / 25 * 60, abs=2.0)


def test_an_offer_tells_the_driver_when_it_is_expected_at_the_restaurant():
    core = cell_with_driver(km_away=2.0)
    core.add_order(order(ready_in_s=0.0))
    offer = next(c for c in core.tick(T0) if isinstance(c, SendToDriver)).message
    [view] = offer.orders
    assert view["courier_arrival_at"] == pytest.approx(T0 + 60 * 2.0 / 25 * 60, abs=2.0)


def test_plan_estimate_range_and_estimate_json_round_trip():
    e = plan_estimate(T0, (T0 + 600) / 60, (T0 + 300) / 60, (T0 + 200) / 60)
    assert (e.dropoff_at - e.dropoff_early) == pytest.approx((JOB_SPREAD * 10 + JOB_SPREAD_FLOOR) * 60)
    assert Estimate.from_json(e.to_json()).to_json() == e.to_json()
    assert e.moved(plan_estimate(T0, (T0 + 700) / 60, None, None), 120.0), "a new basis is always told"
    assert not e.moved(plan_estimate(T0, (T0 + 660) / 60, (T0 + 300) / 60, None), 120.0)
    assert e.moved(plan_estimate(T0, (T0 + 720) / 60, (T0 + 300) / 60, None), 120.0)


@pytest.mark.parametrize("courier", list(Courier))
def test_an_estimate_changes_no_state_and_fits_every_unfinished_order(courier):
    on_the_road = courier in (Courier.PICKED_UP, Courier.DELIVERED)
    state = OrderState(courier=courier, kitchen=Kitchen.READY if on_the_road else Kitchen.PLACED)
    if state.terminal:
        assert allowed(state, Event.ESTIMATE, Actor.SYSTEM) is not None
    else:
        assert apply(state, Event.ESTIMATE, Actor.SYSTEM) == state
    assert allowed(OrderState(), Event.ESTIMATE, Actor.CUSTOMER) is not None, "only dispatch gives estimates"


@pytest.mark.parametrize("speedup", [5.0, 20.0])
def test_a_day_replayed_k_times_faster_gets_the_same_estimates_k_times_sooner(speedup):
    """``eta_time_scale`` (the live MDRP bench): travel k times faster, minute knobs and ready times k times
    shorter, and every estimate (calibrated point, range, pickup, courier arrival) lands k times sooner."""
    match = MatchParams(pickup_lead=2.0, pickup_exit=2.0, dropoff_service=4.0)
    fast_match = dataclasses.replace(match, **{name: getattr(match, name) / speedup for name in MINUTE_FIELDS})
    days = {1.0: CellParams(match=match), speedup: CellParams(speed_kmh=25.0 * speedup, eta_time_scale=speedup,
                                                              match=fast_match)}
    given = {}
    for scale, params in days.items():
        core = CellCore("test", params, live_calibration())
        for i, km in enumerate((0.5, 1.5, 3.0)):
            core.driver_seen(f"d{i}", LAT - km * KM_LAT, LNG, T0)
        for i, ready_min in enumerate((3.0, 8.0, 8.0, 12.0, 25.0)):
            core.add_order(LiveOrder(i, 7, LAT, LNG + 0.01 * i, LAT + 0.02, LNG, T0 - 120 / scale,
                                     T0 + ready_min * 60 / scale))
        given[scale] = {c.order_id: c.estimate for c in core.estimates(T0)}
    for order_id, real in given[1.0].items():
        fast = given[speedup][order_id]
        for name in ("dropoff_at", "dropoff_early", "dropoff_late", "pickup_at", "courier_arrival_at"):
            assert (getattr(fast, name) - T0) * speedup == pytest.approx(getattr(real, name) - T0, abs=0.05), name


def test_placements_do_not_put_off_the_revision_of_everyone_else():
    core = cell_with_driver(CellParams(eta_every_s=15.0))
    core.add_order(order(1, ready_in_s=900.0))
    give(core, core.estimates(T0))
    core.revise_ready(1, T0 + 900.0 + 600.0)  # the kitchen is 10 minutes late
    revised = []
    for i in range(2, 40):  # an order a second, each promised at once
        core.add_order(order(i, ready_in_s=900.0, at=T0 + i))
        give(core, core.estimates(T0 + i, only=i))
        revised += [T0 + i + 0.5 for c in give(core, core.tick(T0 + i + 0.5)) if c.order_id == 1]
    assert revised and revised[0] - T0 <= 15.0 + 1.0, "revised at the first pass eta_every_s after the last"


def test_after_the_pickup_the_drive_starts_once_the_pickups_exit_time_has_passed():
    core = cell_with_driver(CellParams(match=MatchParams(pickup_exit=2.0)))
    core.add_order(order(ready_in_s=0.0))
    offer = next(c for c in core.tick(T0) if isinstance(c, SendToDriver)).message
    [persist] = core.accept("d1", offer.offer_id, T0 + 1)
    core.assignment_persisted(persist.job_id, True)
    core.driver_seen("d1", LAT, LNG, T0 + 200)
    core.job_event("d1", persist.job_id, DriverEvent.ARRIVE, now=T0 + 200)
    core.job_event("d1", persist.job_id, DriverEvent.PICK_UP, now=T0 + 200)
    [on_board] = give(core, core.tick(T0 + 201))
    assert on_board.estimate.dropoff_at == pytest.approx(T0 + 200 + 120 + 60 * 2.0 / 25 * 60, abs=2.0)
