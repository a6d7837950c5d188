"""Great-circle geometry shared by the catalog, the matcher and the simulator."""

from __future__ import annotations

import math

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG), metres


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres between two WGS84 points given in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lng2 - lng1)
    # Products, not ``** 2``: CPython's pow() and numba's squaring can differ in
    # the last bit, and the jitted copy of this function must equal it exactly.
    sin_dphi, sin_dlmb = math.sin(dphi / 2), math.sin(dlmb / 2)
    a = sin_dphi * sin_dphi + math.cos(phi1) * math.cos(phi2) * sin_dlmb * sin_dlmb
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def valid_lat_lng(lat: float, lng: float) -> bool:
    """True when (lat, lng) is a finite WGS84 coordinate pair."""
    return (
        isinstance(lat, (int, float))
        and isinstance(lng, (int, float))
        and math.isfinite(lat)
        and math.isfinite(lng)
        and -90.0 <= lat <= 90.0
        and -180.0 <= lng <= 180.0
    )


def haversine_m_array(lat1, lng1, lat2, lng2):
    """Vectorised :func:`haversine_m` over numpy arrays (broadcasting), metres.

    Same formula as the scalar version; numpy's transcendental functions may
    differ from ``math``'s in the last bit, so kernels that must match their
    twins exactly call the scalar :func:`haversine_m` (jitted) instead.
    """
    import numpy as np

    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    dphi = phi2 - phi1
    dlmb = np.radians(np.asarray(lng2) - np.asarray(lng1))
    a = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))
