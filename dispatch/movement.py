"""Whether a driver's GPS fix is a plausible move from its last one.

A fix implying a speed no vehicle reaches (a spoofed position, one driver
account shared across cities) is refused: it would otherwise move the driver
into a far cell, whose actor costs a process. Pure: positions and times in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from dispatch.geo import haversine_m


@dataclass(frozen=True)
class MovementParams:
    """How fast a driver may plausibly move between two fixes."""

    max_speed_mps: float = 70.0
    """Fastest plausible speed (252 km/h: a car on a motorway, with room to spare)."""
    slack_m: float = 500.0
    """Distance always allowed on top, whatever the time between the fixes: GPS error, and fixes sent in a
    burst after a network gap (they arrive together but were taken apart)."""
    reacquire_after_s: float = 60.0
    """A fix after at least this long without one is a GPS re-acquire (tunnel, phone off, app restarted)..."""
    reacquire_slack_m: float = 5_000.0
    """...and may land this much further away (a first fix is coarse, and the silence may hide a detour)."""


class Fix(NamedTuple):
    lat: float
    lng: float
    at: float
    """When the front door received it (server clock, seconds: a client's own clock is not trusted)."""


class Jump(NamedTuple):
    """A refused move: how far, in how long, and the farthest the driver could have gone."""

    distance_m: float
    elapsed_s: float
    allowed_m: float


def implausible_jump(last: Fix | None, new: Fix, params: MovementParams) -> Jump | None:
    """The jump from ``last`` to ``new`` if no plausible move covers it; None when the move is plausible
    (always for a driver's first fix)."""
    if last is None:
        return None
    elapsed = max(0.0, new.at - last.at)
    slack = params.reacquire_slack_m if elapsed >= params.reacquire_after_s else params.slack_m
    allowed = params.max_speed_mps * elapsed + slack
    distance = haversine_m(last.lat, last.lng, new.lat, new.lng)
    if distance <= allowed:
        return None
    return Jump(distance, elapsed, allowed)
