"""H3 cells as 64-bit integers: a point's cell, and index ranges that cover a circle.

The catalog stores each restaurant's fine cell (resolution :data:`FINE_RES`) in a
btree. All fine descendants of a coarser cell share its leading bits,
so each cell of a cover becomes one contiguous integer range
(:func:`descendant_range`), and a nearby search is a handful of index range
scans followed by exact great-circle distances.
"""

from __future__ import annotations

import math

import h3.api.basic_int as h3

from dispatch.geo import haversine_m

#: Resolution 10 cells are about 0.015 km^2 (76 m edges): a 250 m search then
#: reads about 5x the circle's area, where resolution 9 read about 20x.
FINE_RES = 10
#: Cells a cover may hold before we step to a coarser resolution.
MAX_COVER_DISK_K = 20
#: How much smaller than average a cell's edge can be (H3 cells vary in size
#: across the globe); covers use the pessimistic size so no point is missed.
EDGE_SHRINK = 1.4

_RES_SHIFT = 52
_DIGIT_BITS = 3


def cell_of(lat: float, lng: float, res: int = FINE_RES) -> int:
    """The H3 cell (as an integer) containing a point."""
    return h3.latlng_to_cell(lat, lng, res)


def owner_cell(lat: float, lng: float, res: int) -> int:
    """The resolution-``res`` cell owning a point: the ancestor of the point's fine cell.

    Not always the coarse cell geometrically containing the point (H3 children
    do not nest exactly), but this way every restaurant a cell owns lies in
    the cell's :func:`descendant_range`.
    """
    return h3.cell_to_parent(cell_of(lat, lng), res)


def descendant_range(cell: int, res: int = FINE_RES) -> tuple[int, int]:
    """The smallest and largest integer of any descendant of ``cell`` at resolution ``res``.

    Every resolution-``res`` descendant lies in the range, and no cell of that
    resolution outside ``cell`` does.
    """
    cell_res = (cell >> _RES_SHIFT) & 0xF
    if cell_res > res:
        raise ValueError(f"cell resolution {cell_res} is finer than {res}")
    at_res = (cell & ~(0xF << _RES_SHIFT)) | (res << _RES_SHIFT)
    lo = hi = at_res
    for digit in range(cell_res + 1, res + 1):
        shift = (15 - digit) * _DIGIT_BITS
        lo &= ~(7 << shift)
        hi = (hi & ~(7 << shift)) | (6 << shift)
    return lo, hi


def cover_disk(lat: float, lng: float, radius_m: float) -> tuple[int, int]:
    """A (resolution, k) such that the k-disk around the point's cell contains the whole circle.

    Chooses the finest resolution whose disk stays within ``MAX_COVER_DISK_K`` rings.
    """
    for res in range(FINE_RES, -1, -1):
        k = rings_covering(radius_m, res)
        if k <= MAX_COVER_DISK_K or res == 0:
            return res, k
    raise AssertionError("unreachable")


def rings_covering(distance_m: float, res: int) -> int:
    """A k such that every point within ``distance_m`` of a point in a resolution-``res`` cell
    lies in the k-disk around that cell."""
    # Centres of neighbouring cells are at least sqrt(3) x (smallest edge) apart,
    # so a straight line of length R crosses at most R / spacing + 1 rings.
    spacing = math.sqrt(3) * h3.average_hexagon_edge_length(res, "m") / EDGE_SHRINK
    return math.ceil(distance_m / spacing) + 1


def cover_ranges(lat: float, lng: float, radius_m: float) -> tuple[list[int], list[int]]:
    """Inclusive ranges of fine cells that contain every point within ``radius_m``.

    Returned as two parallel lists (lows, highs), sorted, ready to bind as arrays.
    """
    res, k = cover_disk(lat, lng, radius_m)
    cells = h3.compact_cells(h3.grid_disk(h3.latlng_to_cell(lat, lng, res), k))
    ranges = sorted(descendant_range(c) for c in cells)
    return [lo for lo, _ in ranges], [hi for _, hi in ranges]


def neighbours_nearest_first(cell: int, lat: float, lng: float) -> list[int]:
    """The cells around ``cell`` (its first ring), nearest centre to the point first: the order in which a
    cell asks its neighbours to lend a driver for an order picked up at (lat, lng)."""
    return sorted(h3.grid_ring(cell, 1), key=lambda c: haversine_m(lat, lng, *h3.cell_to_latlng(c)))
