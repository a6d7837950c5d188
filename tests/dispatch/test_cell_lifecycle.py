"""The pure decisions of the cell lifecycle: service area, implausible jumps, idle retirement."""

import math

import h3.api.basic_int as h3
import pytest
from hypothesis import given, settings, strategies as st

from dispatch.cell import CellCore, LiveOrder
from dispatch.cells import owner_cell
from dispatch.geo import haversine_m
from dispatch.movement import Fix, MovementParams, implausible_jump
from dispatch.retirement import IdleWatch
from dispatch.service_area import Region, ServiceArea, cell_refusal

RES = 6
PARIS = (48.8566, 2.3522)
CITIES = [(40.7128, -74.0060), (35.6762, 139.6503), (-33.8688, 151.2093), (51.5074, -0.1278)]


def point_at(origin, distance_m, bearing_deg=90.0):
    """The point ``distance_m`` from ``origin`` along ``bearing_deg`` (spherical Earth)."""
    lat, lng = map(math.radians, origin)
    d, b = distance_m / 6_371_008.8, math.radians(bearing_deg)
    lat2 = math.asin(math.sin(lat) * math.cos(d) + math.cos(lat) * math.sin(d) * math.cos(b))
    lng2 = lng + math.atan2(math.sin(b) * math.sin(d) * math.cos(lat), math.cos(d) - math.sin(lat) * math.sin(lat2))
    return math.degrees(lat2), math.degrees(lng2)


# Service area -------------------------------------------------------------------


def test_derived_area_holds_restaurant_cell_and_its_reach_but_not_distant_cities():
    area = ServiceArea(RES, margin_m=3000.0)
    area.replace([(1, *PARIS, 5000.0)])
    assert area.contains(owner_cell(*PARIS, RES))
    for bearing in range(0, 360, 30):  # every drop-off and approach within radius + margin
        assert area.contains(owner_cell(*point_at(PARIS, 7900.0, bearing), RES))
    for city in CITIES:
        assert not area.contains(owner_cell(*city, RES))
    assert not area.contains(owner_cell(*point_at(PARIS, 80_000.0), RES))


@settings(max_examples=200, deadline=None)
@given(lat=st.floats(-70, 70), lng=st.floats(-179, 179), radius=st.floats(0, 20_000), margin=st.floats(0, 10_000),
       distance=st.floats(0, 1), bearing=st.floats(0, 360))
def test_every_point_within_reach_of_a_restaurant_is_inside(lat, lng, radius, margin, distance, bearing):
    area = ServiceArea(RES, margin_m=margin)
    area.replace([(7, lat, lng, radius)])
    point = point_at((lat, lng), distance * (radius + margin), bearing)
    assert area.contains(owner_cell(*point, RES))


def test_area_follows_restaurants_added_moved_and_removed():
    area = ServiceArea(RES, margin_m=1000.0)
    area.replace([])
    paris, tokyo = owner_cell(*PARIS, RES), owner_cell(*CITIES[1], RES)
    assert area.loaded and not area.contains(paris)
    area.put(1, *PARIS, 2000.0)
    area.put(2, *PARIS, 2000.0)  # same disk: counted twice
    area.remove(1)
    assert area.contains(paris)
    area.put(2, *CITIES[1], 2000.0)  # moved to Tokyo
    assert area.contains(tokyo) and not area.contains(paris) and len(area) == len(h3.grid_disk(tokyo, area.rings(2000.0)))
    area.remove(2)
    area.remove(99)  # unknown: ignored
    assert len(area) == 0 and not area.contains(tokyo)


def test_unloaded_area_refuses_nobody_and_orders_follow_restaurants():
    area = ServiceArea(RES, margin_m=1000.0)
    assert area.contains(owner_cell(*CITIES[0], RES))  # the catalog has not loaded yet: fail open
    area.replace([])
    assert not area.contains(owner_cell(*CITIES[0], RES))
    # A restaurant-derived area always takes orders: the restaurant's own cell is inside by definition.
    assert area.takes_orders_in(owner_cell(*CITIES[0], RES))


def test_configured_region_decides_alone_at_any_resolution():
    paris_res4 = h3.cell_to_parent(owner_cell(*PARIS, RES), 4)
    london = owner_cell(*CITIES[3], RES)
    region = Region.parse(f"{h3.int_to_str(paris_res4)}, {h3.int_to_str(london)}  # two places\n")
    area = ServiceArea(RES, margin_m=1000.0, region=region)
    area.replace([(1, *CITIES[1], 5000.0)])  # a Tokyo restaurant does not widen a configured area
    assert area.contains(owner_cell(*PARIS, RES)) and area.contains(london)
    assert not area.contains(owner_cell(*CITIES[1], RES))
    assert not area.takes_orders_in(owner_cell(*CITIES[1], RES))
    assert area.takes_orders_in(owner_cell(*PARIS, RES))
    assert ServiceArea(RES, 0.0, Region.parse("*")).contains(owner_cell(*CITIES[2], RES))


@pytest.mark.parametrize("text", ["", "nonsense", "8a1fb46622dffff zzz", "0"])
def test_bad_region_names_the_bad_token(text):
    with pytest.raises(ValueError):
        Region.parse(text)


def test_cell_refusal():
    assert cell_refusal(inside=False, exists=True, cells=1, max_cells=10) == "outside_service_area"
    assert cell_refusal(inside=True, exists=False, cells=10, max_cells=10) == "cell_capacity"
    assert cell_refusal(inside=True, exists=True, cells=12, max_cells=10) is None  # an existing cell is served
    assert cell_refusal(inside=True, exists=False, cells=9, max_cells=10) is None


# Implausible jumps ---------------------------------------------------------------


def test_first_fix_and_plausible_moves_pass():
    params = MovementParams()
    assert implausible_jump(None, Fix(*CITIES[0], 0.0), params) is None
    start = Fix(*PARIS, 100.0)
    assert implausible_jump(start, Fix(*point_at(PARIS, 600.0), 110.0), params) is None  # 60 m/s
    assert implausible_jump(start, Fix(*point_at(PARIS, 450.0), 100.0), params) is None  # GPS noise, same instant


def test_jump_between_cities_is_refused_with_its_figures():
    jump = implausible_jump(Fix(*PARIS, 100.0), Fix(*CITIES[3], 130.0), MovementParams())
    assert jump is not None
    assert jump.distance_m == pytest.approx(haversine_m(*PARIS, *CITIES[3]))
    assert jump.elapsed_s == 30.0 and jump.allowed_m == 70.0 * 30 + 500.0


def test_reacquire_after_silence_gets_more_room_but_not_a_continent():
    params = MovementParams(max_speed_mps=70.0, slack_m=500.0, reacquire_after_s=60.0, reacquire_slack_m=5000.0)
    last = Fix(*PARIS, 0.0)
    far = point_at(PARIS, 70.0 * 59 + 3000.0)
    assert implausible_jump(last, Fix(*far, 59.0), params) is not None  # not silent long enough
    assert implausible_jump(last, Fix(*point_at(PARIS, 70.0 * 60 + 3000.0), 60.0), params) is None
    assert implausible_jump(last, Fix(*CITIES[0], 600.0), params) is not None


@settings(max_examples=300, deadline=None)
@given(distance=st.floats(0, 50_000), elapsed=st.floats(0, 3600))
def test_jump_decision_is_the_speed_bound(distance, elapsed):
    params = MovementParams()
    new = point_at(PARIS, distance)
    jump = implausible_jump(Fix(*PARIS, 1000.0), Fix(*new, 1000.0 + elapsed), params)
    slack = params.reacquire_slack_m if elapsed >= params.reacquire_after_s else params.slack_m
    measured = haversine_m(*PARIS, *new)
    assert (jump is not None) == (measured > params.max_speed_mps * elapsed + slack)


# Idle retirement ----------------------------------------------------------------


def test_empty_quiet_cell_retires_after_the_idle_period():
    watch = IdleWatch(idle_s=300.0, now=1000.0)
    assert not watch.may_retire(True, 1299.0)
    assert watch.may_retire(True, 1300.0)


def test_anything_arriving_or_held_restarts_the_idle_period():
    watch = IdleWatch(idle_s=300.0, now=0.0)
    watch.arrived(200.0)
    assert not watch.may_retire(True, 499.0)
    assert not watch.may_retire(False, 600.0)  # not empty at 600: quiet from there
    assert not watch.may_retire(True, 899.0)
    assert watch.may_retire(True, 900.0)
    watch.arrived(100.0)  # a late report of an old arrival does not move the clock back
    assert watch.quiet_since == 600.0


def test_a_cell_is_empty_only_without_online_drivers_orders_offers_and_jobs():
    core = CellCore("cell")
    assert core.is_empty()
    core.driver_seen("d1", *PARIS, now=0.0)
    assert not core.is_empty()
    core.tick(now=core.params.heartbeat_ttl_s + 1)  # silent: lost, offline
    assert core.is_empty()
    core.add_order(LiveOrder(id=1, restaurant_id=1, restaurant_lat=PARIS[0], restaurant_lng=PARIS[1],
                             dropoff_lat=PARIS[0] + 0.01, dropoff_lng=PARIS[1], placed_at=0.0, ready_at=600.0))
    assert not core.is_empty()
    core.withdraw_order(1, "cancelled")
    assert core.is_empty()
