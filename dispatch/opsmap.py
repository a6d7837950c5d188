"""The live ops map's frames, sans I/O: what a cell reports, and what one viewer is sent.

A cell actor answers :func:`cell_view` (its load plus a bounded, stable
sample of its drivers, its pending orders and its active jobs); once a
second the front door gathers every cell's view and, for each viewer of
``/ops``, :func:`compose_frame` turns them into one frame: every cell as a
hexagon with its metrics, and the drivers, orders and jobs inside the
viewer's viewport, sampled down to ``max_drivers``. The cost per second is
one call per cell and one frame per viewer, whatever the number of drivers.
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache

import h3

import wire
from dispatch.cell import CellCore, OrderPhase
from dispatch.lifecycle import DriverStatus

#: Most drivers one cell reports per view, and most drivers one frame carries.
MAX_DRIVERS_PER_CELL = 2000
MAX_DRIVERS_PER_FRAME = 1500
#: Most pending orders and active jobs one frame carries.
MAX_ORDERS_PER_FRAME = 1000
MAX_JOBS_PER_FRAME = 1000
#: Decimal places kept of coordinates (about 1 m).
COORD_DIGITS = 5
#: A frame at every cap above, with the longest ids, encodes (JSON) to less than this (tested): the ops
#: socket's outbox holds one waiting frame of this size.
MAX_FRAME_BYTES = 2 * 1024 * 1024


#: Each driver status's name (``Enum.value`` is a slow property, read here for every driver every second).
STATUS_NAMES = {status: status.value for status in DriverStatus}


@dataclass(frozen=True)
class Viewport:
    """The part of the map a viewer looks at (degrees); ``west > east`` crosses the antimeridian."""

    south: float
    west: float
    north: float
    east: float

    def contains(self, lat: float, lng: float) -> bool:
        if not self.south <= lat <= self.north:
            return False
        if self.west <= self.east:
            return self.west <= lng <= self.east
        return lng >= self.west or lng <= self.east


def sample_rank(driver_id: str) -> int:
    """A driver's place in every sample (the same in every frame, so sampled dots do not flicker)."""
    return zlib.crc32(driver_id.encode())


def _point(lat: float, lng: float) -> list[float]:
    return [round(lat, COORD_DIGITS), round(lng, COORD_DIGITS)]


def cell_view(core: CellCore, max_drivers: int = MAX_DRIVERS_PER_CELL) -> dict:
    """What one cell shows on the map: ``cell`` (its id), its load (``CellCore.load``), ``drivers_total``, at most
    ``max_drivers`` drivers as ``[id, lat, lng, status]`` (a stable sample), pending orders as
    ``[order id, restaurant lat, lng, drop-off lat, lng]`` and active jobs as
    ``[driver id, driver lat, lng, target lat, lng, orders]``: the target is the restaurant until pick-up,
    then the next drop-off."""
    offline = DriverStatus.OFFLINE
    drivers = [d for d in core.drivers.values() if d.status is not offline]
    online = len(drivers)
    if online > max_drivers:
        drivers = sorted(drivers, key=lambda d: sample_rank(d.id))[:max_drivers]
    pending = [[o.id, *_point(o.restaurant_lat, o.restaurant_lng), *_point(o.dropoff_lat, o.dropoff_lng)]
               for o in core.orders.values() if o.phase in (OrderPhase.PENDING, OrderPhase.OFFERED)]
    jobs = []
    for job in core.jobs.values():
        driver = core.drivers.get(job.driver_id)
        orders = [core.orders[i] for i in job.order_ids if i in core.orders and i not in job.delivered]
        if driver is None or not orders:
            continue
        if driver.status is DriverStatus.DELIVERING:
            target = _point(orders[0].dropoff_lat, orders[0].dropoff_lng)
        else:
            target = _point(orders[0].restaurant_lat, orders[0].restaurant_lng)
        jobs.append([driver.id, *_point(driver.lat, driver.lng), *target, [o.id for o in orders]])
    return {"cell": core.cell_id, **core.load(), "drivers_total": online,
            "driver_sample": [[d.id, round(d.lat, COORD_DIGITS), round(d.lng, COORD_DIGITS), STATUS_NAMES[d.status]]
                              for d in drivers],
            "pending": pending, "jobs": jobs}


@lru_cache(maxsize=4096)
def hexagon(cell_id: str) -> tuple[tuple[float, float], ...]:
    """The corners of H3 cell ``cell_id`` as (lat, lng) pairs."""
    return tuple((round(lat, 6), round(lng, 6)) for lat, lng in h3.cell_to_boundary(cell_id))


def cell_metrics(view: dict) -> dict:
    """The figures of a cell's panel and its shading, from its view (``load`` of the cell actor)."""
    drivers = view.get("drivers", {})
    tick = view.get("tick_ms", {})
    return {
        "pending_orders": view.get("pending_orders", 0),
        "idle_drivers": drivers.get(DriverStatus.IDLE.value, 0),
        "drivers": {status: count for status, count in drivers.items() if status != DriverStatus.OFFLINE.value},
        "drivers_total": view.get("drivers_total", sum(drivers.values())),
        "open_offers": view.get("open_offers", 0),
        "jobs": len(view.get("jobs", ())),
        "tick_ms_p50": tick.get("p50", 0.0),
        "tick_ms_p99": tick.get("p99", 0.0),
        "gps_lag_ms_p99": view.get("gps_lag_ms", {}).get("p99", 0.0),
        "offers": view.get("offers", 0),
        "gps_fixes": view.get("gps_fixes", 0),
        "node_id": view.get("node_id"),
    }


def _in_view(rows: list, viewport: Viewport | None, lat_at: int, limit: int) -> tuple[list, int]:
    """The rows whose point (``row[lat_at]``, ``row[lat_at + 1]``) is in the viewport, at most ``limit`` of
    them; and how many were in it."""
    inside = [row for row in rows if viewport is None or viewport.contains(row[lat_at], row[lat_at + 1])]
    return inside[:limit], len(inside)


def compose_frame(views: list[dict], viewport: Viewport | None, at: float, *,
                  max_drivers: int = MAX_DRIVERS_PER_FRAME, unanswered: list[str] = ()) -> wire.OpsFrame:
    """One viewer's frame from every cell's view: all cells (hexagon, metrics), and the drivers, the orders
    waiting for a driver (pending or offered: ``pending``) and jobs in ``viewport`` (None: everywhere). Drivers beyond ``max_drivers`` are left out by a stable sample
    (:func:`sample_rank`); ``drivers_in_view`` counts them all, ``drivers_sampled`` says whether any was left out.
    """
    views = sorted(views, key=lambda v: v["cell"])
    cells = [{"cell": v["cell"], "boundary": [list(corner) for corner in hexagon(v["cell"])], **cell_metrics(v)}
             for v in views]
    candidates = [row for v in views for row in v.get("driver_sample", ())]
    in_view = [row for row in candidates if viewport is None or viewport.contains(row[1], row[2])]
    drivers = in_view
    if len(in_view) > max_drivers:
        drivers = sorted(in_view, key=lambda row: sample_rank(row[0]))[:max_drivers]
    reported = sum(len(v.get("driver_sample", ())) for v in views)
    total = sum(v.get("drivers_total", len(v.get("driver_sample", ()))) for v in views)
    waiting = [row for v in views for row in v.get("pending", ())]
    pending, pending_in_view = _in_view(waiting, viewport, 1, MAX_ORDERS_PER_FRAME)
    jobs, jobs_in_view = _in_view([row for v in views for row in v.get("jobs", ())], viewport, 1,
                                  MAX_JOBS_PER_FRAME)
    return wire.OpsFrame(
        at=at, cells=cells, unanswered=sorted(unanswered), drivers=drivers, pending=pending, jobs=jobs,
        totals={"cells": len(cells), "drivers": total, "drivers_in_view": len(in_view),
                "drivers_sampled": len(drivers) < len(in_view) or reported < total,
                "pending_orders": sum(c["pending_orders"] for c in cells), "orders_waiting": len(waiting),
                "pending_in_view": pending_in_view,
                "jobs": sum(c["jobs"] for c in cells), "jobs_in_view": jobs_in_view},
    )
