"""Delivery-time quotes at search: how long an order from each restaurant would take to reach the searcher.

Pure, like :mod:`dispatch.eta`. A cell summarises its couriers once (:func:`availability`: when and where each
is free again once the cell's pending orders, and the orders to expect, are served: the final driver states of
the same virtual dispatch :func:`dispatch.eta.forecast` runs); a front door keeps every cell's summary and
quotes each restaurant of a search page from it (:func:`quote_restaurants`; :class:`QuoteBoard` for every
cell's couriers at once, as a front door holds them)::

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
from dispatch.eta import DELAY_BANDS, EtaCalibration, Promise, band_of, virtual_dispatch
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


def quote_restaurants(now: float, basis: CourierAvailability, restaurant_x, restaurant_y, prep_minutes,
                      searcher_x: float, searcher_y: float, travel: TravelModel, params: MatchParams = MatchParams(),
                      calibration: EtaCalibration = EtaCalibration()) -> Promise:
    """Door time (point, p10, p90; minutes, origin of ``now``) of an order placed at ``now`` at each restaurant
    for the searcher's point, from the couriers of ``basis``; NaN for all when it has none.

    Courier arrival: the earliest over the couriers of ``max(now, free_at) + travel`` to the restaurant; pickup:
    ``max(arrival + pickup_lead, now + prep)``; door: pickup + ``pickup_exit`` + travel to the searcher +
    half the ``dropoff_service``, then calibrated by its courier delay (pickup minus ready) and the load
    (:meth:`~dispatch.eta.EtaCalibration.promise`). :class:`QuoteBoard` quotes from many cells at once.
    """
    board = QuoteBoard({"basis": basis}, travel, params, calibration)
    n = len(np.asarray(restaurant_x))
    return board.quote(now, np.full(n, board.pool_of("basis"), np.int64), restaurant_x, restaurant_y, prep_minutes,
                       searcher_x, searcher_y)


class QuoteBoard:
    """Every cell's couriers (``cells``: cell id -> :class:`CourierAvailability`) in one set of arrays, ready to
    quote a whole search page in one kernel call (:func:`dispatch.kernels.quote_page`).

    The couriers quoting for a restaurant are its cell's, or, when that cell has none, its ring-1 neighbours'
    (a cell borrows drivers from its neighbours), at the busiest of their loads: :meth:`pool_of`. Built once
    per refresh of ``cells``, so a search only looks its cells up."""

    def __init__(self, cells: dict[str, CourierAvailability], travel: TravelModel,
                 params: MatchParams = MatchParams(), calibration: EtaCalibration = EtaCalibration()):
        import h3

        self.travel, self.params = travel, params
        self.offsets = np.ascontiguousarray(calibration.offsets, np.float64)
        self.delay_edges = np.asarray(DELAY_BANDS, np.float64)
        staffed = {cell: basis.earliest_first() for cell, basis in cells.items() if len(basis)}
        pools: dict[str, CourierAvailability] = dict(staffed)
        for cell in staffed:
            for near in h3.grid_disk(cell, 1) if _is_h3(cell) else ():
                if near not in pools:
                    lenders = [staffed[c] for c in h3.grid_disk(near, 1) if c != near and c in staffed]
                    pools[near] = CourierAvailability.merged(lenders).earliest_first()
        self._pool: dict[str, int] = {cell: p for p, cell in enumerate(pools)}
        every = CourierAvailability.merged(list(pools.values()))
        self.free_at, self.x, self.y = (np.ascontiguousarray(a, np.float64) for a in (every.free_at, every.x, every.y))
        ends = np.cumsum([0] + [len(b) for b in pools.values()], dtype=np.int64)
        self.pool_first, self.pool_stop = ends[:-1].copy(), ends[1:].copy()
        loads = np.array([b.load for b in pools.values()], np.float64)
        self.pool_band = band_of(np.zeros(len(loads)), loads).astype(np.int64)  # the load band's first band
        #: When each pool's couriers were read (minutes; its oldest cell's).
        self.pool_at = [b.at for b in pools.values()]

    def __len__(self) -> int:
        return len(self._pool)

    def pool_of(self, cell_id: str) -> int:
        """The pool quoting for restaurants of ``cell_id`` (-1: no courier there nor around)."""
        return self._pool.get(cell_id, -1)

    def quote(self, now: float, pool_of_row, restaurant_x, restaurant_y, prep_minutes, searcher_x: float,
              searcher_y: float) -> Promise:
        """:func:`quote_restaurants` for each restaurant from its pool (``pool_of_row``, from :meth:`pool_of`)."""
        door, p10, p90 = kernels.quote_page(
            float(now), self.free_at, self.x, self.y, self.pool_first, self.pool_stop, self.pool_band,
            np.ascontiguousarray(pool_of_row, np.int64), np.ascontiguousarray(restaurant_x, np.float64),
            np.ascontiguousarray(restaurant_y, np.float64), np.ascontiguousarray(prep_minutes, np.float64),
            float(searcher_x), float(searcher_y), float(self.params.pickup_lead), float(self.params.pickup_exit),
            float(self.params.dropoff_service), self.travel.kind, self.travel.metres_per_minute, self.delay_edges,
            self.offsets)
        return Promise(door=door, door_p10=p10, door_p90=p90)


def _is_h3(cell_id: str) -> bool:
    import h3

    try:
        return bool(h3.is_valid_cell(cell_id))
    except (TypeError, ValueError):
        return False
