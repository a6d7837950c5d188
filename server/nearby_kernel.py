"""The nearby-search scan of the in-memory catalog replica (numba, with a plain-Python twin).

The distance is computed exactly as ``store.catalog.DISTANCE_SQL`` does
it in Postgres, operation for operation (``power(x, 2)`` is ``pow``, not
``x * x``, as Postgres calls it), so that on the same C math library the
replica and the SQL fallback produce the same distances, and a pagination
cursor issued by one is understood by the other.
"""

from __future__ import annotations

import math

import numpy as np

from dispatch.jit import kernel_decorator

kernel = kernel_decorator(globals())

#: ``2 * 6371008.8`` and ``radians()``'s factor, as Postgres evaluates them.
TWO_EARTH_RADII_M = 12742017.6
RADIANS_PER_DEGREE = 0.017453292519943295


@kernel
def distance_m(q_lat, q_lng, cos_q_lat, lat, lng, two):
    """Great-circle metres from the query point to (lat, lng), as DISTANCE_SQL computes them.

    ``two`` is 2.0 passed at run time, so the compiler calls ``pow`` instead of squaring.
    """
    a = math.sin(((lat - q_lat) * RADIANS_PER_DEGREE) / 2.0)
    b = math.sin(((lng - q_lng) * RADIANS_PER_DEGREE) / 2.0)
    h = math.pow(a, two) + cos_q_lat * math.cos(lat * RADIANS_PER_DEGREE) * math.pow(b, two)
    return TWO_EARTH_RADII_M * math.asin(min(1.0, math.sqrt(h)))


@kernel
def scan(starts, stops, order, lat, lng, radius, ids, q_lat, q_lng, search_radius,
         has_after, after_distance, after_id, two, out_slots, out_distances):
    """Rows in ``order[starts[k]:stops[k]]`` within ``min(search_radius, radius)`` and after the cursor.

    Writes their slots and distances to the outputs (large enough for every
    scanned row) and returns how many it wrote. ``two`` is 2.0 (see :func:`distance_m`).
    """
    cos_q_lat = math.cos(q_lat * RADIANS_PER_DEGREE)
    n = 0
    for k in range(starts.shape[0]):
        for position in range(starts[k], stops[k]):
            slot = order[position]
            d = distance_m(q_lat, q_lng, cos_q_lat, lat[slot], lng[slot], two)
            if d > min(search_radius, radius[slot]):
                continue
            if has_after and not (d > after_distance or (d == after_distance and ids[slot] > after_id)):
                continue
            out_slots[n] = slot
            out_distances[n] = d
            n += 1
    return n


def empty_outputs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Output buffers for :func:`scan` holding ``size`` rows."""
    return np.empty(size, dtype=np.int64), np.empty(size, dtype=np.float64)


def warm_up() -> None:
    """Compile (or load from numba's cache) :func:`scan` now, not in the first search."""
    slots, distances = empty_outputs(1)
    empty = np.zeros(0, dtype=np.int64)
    zeros = np.zeros(1)
    scan(empty, empty, np.zeros(1, dtype=np.int64), zeros, zeros, zeros, np.zeros(1, dtype=np.int64), 0.0, 0.0,
         1.0, False, 0.0, 0, 2.0, slots, distances)
