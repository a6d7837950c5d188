"""H3 covers used by nearby search: exact ranges, and no point within the radius missed."""

import h3.api.basic_int as h3
from hypothesis import given, settings, strategies as st

from dispatch.cells import FINE_RES, cell_of, cover_ranges, descendant_range, neighbours_nearest_first
from dispatch.geo import EARTH_RADIUS_M, haversine_m

import math


@settings(max_examples=60, deadline=None)
@given(lat=st.floats(-80, 80), lng=st.floats(-179, 179), res=st.integers(0, FINE_RES))
def test_descendant_range_is_exactly_the_children(lat, lng, res):
    fine = cell_of(lat, lng, FINE_RES)
    cell = h3.cell_to_parent(fine, res)
    lo, hi = descendant_range(cell)
    assert lo <= fine <= hi
    if FINE_RES - res <= 3:  # children lists stay small enough to enumerate
        children = h3.cell_to_children(cell, FINE_RES)
        assert (lo, hi) == (min(children), max(children))
    # The neighbouring cell's descendants lie outside the range.
    neighbour = next(c for c in h3.grid_ring(cell, 1))
    assert not lo <= h3.cell_to_center_child(neighbour, FINE_RES) <= hi


def destination(lat, lng, bearing_deg, distance_m):
    phi, lmb, theta = math.radians(lat), math.radians(lng), math.radians(bearing_deg)
    delta = distance_m / EARTH_RADIUS_M
    phi2 = math.asin(math.sin(phi) * math.cos(delta) + math.cos(phi) * math.sin(delta) * math.cos(theta))
    lmb2 = lmb + math.atan2(math.sin(theta) * math.sin(delta) * math.cos(phi), math.cos(delta) - math.sin(phi) * math.sin(phi2))
    return math.degrees(phi2), (math.degrees(lmb2) + 540) % 360 - 180


@settings(max_examples=150, deadline=None)
@given(
    lat=st.floats(-70, 70),
    lng=st.floats(-180, 180),
    radius=st.floats(10, 50_000),
    bearing=st.floats(0, 360),
    fraction=st.floats(0, 1),
)
def test_every_point_within_the_radius_is_covered(lat, lng, radius, bearing, fraction):
    lows, highs = cover_ranges(lat, lng, radius)
    plat, plng = destination(lat, lng, bearing, radius * fraction)
    assert haversine_m(lat, lng, plat, plng) <= radius * 1.0001
    fine = cell_of(plat, plng)
    assert any(lo <= fine <= hi for lo, hi in zip(lows, highs))


@settings(max_examples=30, deadline=None)
@given(st.floats(-60, 60), st.floats(-179, 179))
def test_neighbours_are_the_first_ring_nearest_to_the_point_first(lat, lng):
    cell = h3.latlng_to_cell(lat, lng, 6)
    order = neighbours_nearest_first(cell, lat, lng)
    assert sorted(order) == sorted(h3.grid_ring(cell, 1))
    distances = [haversine_m(lat, lng, *h3.cell_to_latlng(c)) for c in order]
    assert distances == sorted(distances)
