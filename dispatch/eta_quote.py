"""Delivery-time quotes at search: how long an order from each restaurant would take to reach the searcher.

Pure, like :mod:`dispatch.eta`. A cell summarises its couriers once (:func:`availability`: when and where each
is free again once the cell's pending orders, and the orders to expect, are served: the final driver states of
the same virtual dispatch :func:`dispatch.eta.forecast` runs); a front door keeps every cell's summary and
quotes each restaurant of a search page from it (:func:`quote_restaurants`)::

    basis = availability(now, drivers, pending_orders, travel, params, expected)   # in the cell
    promise = quote_restaurants(now, basis, rx, ry, prep, lng, lat, travel, params, calibration)
    promise.door[i], promise.door_p10[i], promise.door_p90[i]   # minutes, same origin as ``now``; NaN: no courier

A restaurant's quote is the order it would get if placed now: its nearest courier in time (free at
``free_at``, then driving from where it is free), picking up when the food is ready, driving to the searcher
and half the drop-off service (the replay's convention, ``dispatch.simulator``), calibrated as placements are
(:class:`dispatch.eta.EtaCalibration`, banded by the quote's courier delay and the cell's load).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dispatch import kernels
from dispatch.eta import EtaCalibration, Promise, virtual_dispatch
from dispatch.matcher import Drivers, MatchParams, Orders, TravelModel

KEEP_COURIERS = 128
"""Couriers a cell's availability keeps (the earliest free): enough for any quote, small to ship."""


@dataclass(frozen=True)
class CourierAvailability:
    """When (``free_at``, minutes) and where (``x`` lng, ``y`` lat) each courier of a cell is free once its
    known work is done, earliest first; ``load`` is the cell's load (``dispatch.eta.Forecast.load``) and ``at``
    the ``now`` it was computed at (minutes)."""

    free_at: np.ndarray
    x: np.ndarray
    y: np.ndarray
    load: float
    at: float

    def __len__(self) -> int:
        return len(self.free_at)

    def to_lists(self) -> dict:
        """Plain lists and floats (cheap to ship between processes); :meth:`from_lists` reads it back."""
        return {"free_at": self.free_at.tolist(), "x": self.x.tolist(), "y": self.y.tolist(),
                "load": float(self.load), "at": float(self.at)}

    @classmethod
    def from_lists(cls, data: dict) -> "CourierAvailability":
        return cls(*(np.asarray(data[k], np.float64) for k in ("free_at", "x", "y")), float(data["load"]),
                   float(data["at"]))

    @classmethod
    def merged(cls, parts: list["CourierAvailability"]) -> "CourierAvailability":
        """Every courier of ``parts`` (cells lending to each other), in their order, at the busiest load and the
        oldest ``at`` of them (the wider, more cautious range)."""
        if not parts:
            return cls(np.empty(0), np.empty(0), np.empty(0), 0.0, float("nan"))
        if len(parts) == 1:
            return parts[0]
        free_at, x, y = (np.concatenate([getattr(p, k) for p in parts]) for k in ("free_at", "x", "y"))
        return cls(free_at, x, y, max(p.load for p in parts), min(p.at for p in parts))

    def earliest_first(self) -> "CourierAvailability":
        """The same couriers sorted by ``free_at`` (as :func:`availability` returns them)."""
        order = np.argsort(self.free_at, kind="stable")
        return CourierAvailability(self.free_at[order], self.x[order], self.y[order], self.load, self.at)


def availability(now: float, drivers: Drivers, orders: Orders, travel: TravelModel,
                 params: MatchParams = MatchParams(), expected: Orders | None = None,
                 keep: int = KEEP_COURIERS) -> CourierAvailability:
    """The ``keep`` earliest-free couriers of a cell once its pending (and ``expected``) orders are served
    (:func:`dispatch.eta.virtual_dispatch`), never earlier than ``now``; couriers whose shift ends before they
    are free are left out."""
    _, _, load, (*_, free_at, x, y) = virtual_dispatch(now, drivers, orders, travel, params, expected)
    free_at = np.maximum(free_at, now)
    serving = np.flatnonzero(free_at <= np.asarray(drivers.shift_end, np.float64))
    first = serving[np.argsort(free_at[serving], kind="stable")[:keep]]
    return CourierAvailability(free_at[first], x[first], y[first], float(load), float(now))


def quote_restaurants(now: float, basis, restaurant_x, restaurant_y, prep_minutes, searcher_x: float,
                      searcher_y: float, travel: TravelModel, params: MatchParams = MatchParams(),
                      calibration: EtaCalibration = EtaCalibration(), basis_of_row=None) -> Promise:
    """Door time (point, p10, p90; minutes, origin of ``now``) of an order placed at ``now`` at each restaurant
    for the searcher's point; NaN where no courier can quote it.

    ``basis`` is a :class:`CourierAvailability` quoting every row, or a list of them, one per cell, with
    ``basis_of_row`` saying which quotes each row (-1: none), so that a whole search page is one call.
    Courier arrival: the earliest over the couriers of ``max(now, free_at) + travel`` to the restaurant; pickup:
    ``max(arrival + pickup_lead, now + prep)``; door: pickup + ``pickup_exit`` + travel to the searcher +
    half the ``dropoff_service``, then calibrated by its courier delay (pickup minus ready) and its basis' load.
    """
    rx = np.ascontiguousarray(restaurant_x, np.float64)
    ry = np.ascontiguousarray(restaurant_y, np.float64)
    n = len(rx)
    bases = [basis] if isinstance(basis, CourierAvailability) else list(basis)
    which = np.zeros(n, np.int64) if basis_of_row is None else np.asarray(basis_of_row, np.int64)
    starts = np.cumsum([0] + [len(b) for b in bases], dtype=np.int64)  # basis b's couriers: starts[b]:starts[b + 1]
    first = np.where(which >= 0, starts[which], 0)  # -1 (no basis): an empty run
    stop = np.where(which >= 0, starts[which + 1], 0)
    couriers = CourierAvailability.merged(bases)
    door, courier_delay = kernels.quote_doors(
        float(now), couriers.free_at, couriers.x, couriers.y, first, stop, rx, ry,
        np.ascontiguousarray(prep_minutes, np.float64), float(searcher_x), float(searcher_y),
        float(params.pickup_lead), float(params.pickup_exit), float(params.dropoff_service), travel.kind,
        travel.metres_per_minute)
    load = np.array([b.load for b in bases] + [0.0])[which]  # -1 (no basis): the last, unused
    return calibration.promise(door, courier_delay, load)
