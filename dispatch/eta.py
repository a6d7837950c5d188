"""The delivery-time promise: when an order will be picked up and reach the door, with a range.

Pure, like the matcher: the cell's live state in (the same :class:`~dispatch.matcher.Drivers` and
:class:`~dispatch.matcher.Orders` arrays the matcher takes, ``now`` an argument), numbers out::

    from dispatch.eta import forecast, EtaCalibration

    raw = forecast(now, drivers, pending_orders, travel, params)   # every pending order at once
    promise = calibration.promise(raw.door, raw.courier_delay)      # door time p10 / point / p90
    promise.door[i], promise.door_p10[i], promise.door_p90[i]       # minutes, same origin as ``now``
    raw.arrival[i]                                                  # the courier's expected arrival at the restaurant

:func:`forecast` replays, in one pass, what the matcher will do with the cell's pending orders:
orders in ready-time order, each to the driver the matcher's cost prefers (busy drivers from when and
where their job ends, as in matching), each driver then busy with it until it has left the door
(numba kernel :func:`dispatch.kernels.forecast_jobs`, with its plain-Python twin). It ignores orders
not placed yet and bundling, and the matcher may choose otherwise; :class:`EtaCalibration` corrects
the point and gives the range from residuals measured on other days, in bands of the forecast's
courier delay (pickup minus ready time), since the error grows with scarcity.

Once an order is committed, its times are the job's own plan, :func:`dispatch.matcher.job_times`
(from the driver's position at assignment, from the restaurant at pickup).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from dispatch import kernels
from dispatch.matcher import Drivers, MatchParams, Orders, TravelModel

DELAY_BANDS = (0.0, 1.0, 5.0, 10.0, 20.0, 40.0)
"""Lower edges (minutes of forecast courier delay: pickup minus ready) of the calibration bands."""
EXPECTED_WINDOW = 20.0
"""Minutes of recent orders replayed as the orders to expect (:func:`expected_orders`). Chosen on the
twelve o100t100*p100 days (0.001, 20, 30 and 40 tried): it removes most of the forecast's early bias."""
ORDER_FIELDS = tuple(field.name for field in fields(Orders))
MIN_BAND_ORDERS = 50
"""A band with fewer calibration residuals than this borrows the pooled residuals of every band."""


@dataclass(frozen=True)
class Forecast:
    """Raw (uncalibrated) forecast for each pending order, in minutes."""

    arrival: np.ndarray
    """The courier's arrival at the restaurant (NaN: no courier in the cell can take it before its shift ends;
    then pickup and door are the earliest the food allows)."""
    pickup: np.ndarray
    door: np.ndarray
    """Arrival at the customer's door."""
    ready: np.ndarray

    @property
    def courier_delay(self) -> np.ndarray:
        """Minutes the food is expected to wait for its courier (pickup minus ready time)."""
        return self.pickup - self.ready


def forecast(now: float, drivers: Drivers, orders: Orders, travel: TravelModel,
             params: MatchParams = MatchParams(), expected: Orders | None = None) -> Forecast:
    """Pickup, door and courier-arrival times of every pending order, from the cell's state at ``now``.

    ``expected`` orders (:func:`expected_orders`) are not forecast but compete for the drivers: orders
    placed after an order but ready before it will be served first."""
    n_pending = len(orders.ready_at)
    if expected is not None and len(expected.ready_at):
        orders = Orders(*(np.concatenate([np.asarray(getattr(orders, f)), np.asarray(getattr(expected, f))])
                          for f in ORDER_FIELDS))
    ready = np.ascontiguousarray(orders.ready_at, np.float64)
    sequence = np.lexsort((np.arange(len(ready)), ready)).astype(np.int64)
    pool = np.count_nonzero((drivers.free_at <= now + params.lookahead) & (drivers.shift_end >= now))
    scarce = n_pending >= params.bundle_scarcity_ratio * pool
    _, arrival, pickup, door = kernels.forecast_jobs(
        float(now), sequence,
        *(np.ascontiguousarray(a, np.float64) for a in (drivers.x, drivers.y, drivers.free_at, drivers.shift_end)),
        np.ascontiguousarray(orders.restaurant_id, np.int64),
        *(np.ascontiguousarray(a, np.float64) for a in (orders.restaurant_x, orders.restaurant_y, orders.drop_x,
                                                       orders.drop_y)),
        ready, float(params.pickup_lead), float(params.pickup_exit), float(params.dropoff_service), travel.kind,
        travel.metres_per_minute, float(params.lateness_weight), float(params.idle_weight),
        float(params.travel_weight), int(params.max_bundle_size), float(params.bundle_ready_window),
        float(params.bundle_max_delay_scarce if scarce else params.bundle_max_delay),
    )
    return Forecast(arrival=arrival[:n_pending], pickup=pickup[:n_pending], door=door[:n_pending],
                    ready=ready[:n_pending])


def expected_orders(recent: Orders, now: float, window: float) -> Orders:
    """The orders to expect in the next ``window`` minutes: those placed in the last ``window`` minutes
    (``recent``, assigned or not), again, ``window`` minutes later."""
    keep = (np.asarray(recent.placed_at) > now - window) & (np.asarray(recent.placed_at) <= now)
    shifted = {f: np.asarray(getattr(recent, f))[keep] for f in ORDER_FIELDS}
    shifted["placed_at"] = shifted["placed_at"] + window
    shifted["ready_at"] = shifted["ready_at"] + window
    return Orders(**shifted)


@dataclass(frozen=True)
class Promise:
    """Calibrated door time per order: point estimate and p10-p90 range, in minutes."""

    door: np.ndarray
    door_p10: np.ndarray
    door_p90: np.ndarray


@dataclass(frozen=True)
class EtaCalibration:
    """Residual quantiles (actual door time minus raw forecast) per band of forecast courier delay.

    ``offsets[b]`` holds (p10, median, p90) minutes for band ``b`` (lower edges :data:`DELAY_BANDS`).
    The identity calibration (all zeros) promises the raw forecast with an empty range."""

    offsets: tuple[tuple[float, float, float], ...] = tuple((0.0, 0.0, 0.0) for _ in DELAY_BANDS)

    @classmethod
    def fit(cls, residuals: np.ndarray, courier_delay: np.ndarray) -> "EtaCalibration":
        """Quantiles of ``residuals`` per band of ``courier_delay`` (from days other than the one scored)."""
        residuals = np.asarray(residuals, np.float64)
        band = band_of(courier_delay)
        pooled = tuple(float(q) for q in np.percentile(residuals, (10, 50, 90))) if len(residuals) else (0.0,) * 3
        offsets = []
        for b in range(len(DELAY_BANDS)):
            mine = residuals[band == b]
            offsets.append(tuple(float(q) for q in np.percentile(mine, (10, 50, 90)))
                           if len(mine) >= MIN_BAND_ORDERS else pooled)
        return cls(tuple(offsets))

    def promise(self, door: np.ndarray, courier_delay: np.ndarray) -> Promise:
        """The calibrated promise for raw door times and courier delays (``Forecast.door``,
        ``Forecast.courier_delay``); NaN where the forecast has none."""
        door = np.asarray(door, np.float64)
        table = np.asarray(self.offsets, np.float64)[band_of(courier_delay)]
        return Promise(door=door + table[:, 1], door_p10=door + table[:, 0], door_p90=door + table[:, 2])

    def to_json(self) -> dict:
        return {"delay_bands": list(DELAY_BANDS), "offsets_p10_p50_p90": [list(o) for o in self.offsets]}

    @classmethod
    def from_json(cls, data: dict) -> "EtaCalibration":
        """Inverse of :meth:`to_json`; refuses a table made for other bands."""
        if tuple(data["delay_bands"]) != DELAY_BANDS:
            raise ValueError(f"calibration bands {data['delay_bands']} differ from {list(DELAY_BANDS)}")
        return cls(tuple(tuple(float(v) for v in o) for o in data["offsets_p10_p50_p90"]))


def band_of(courier_delay: np.ndarray) -> np.ndarray:
    """Calibration band index of each forecast courier delay (NaN and negatives go to band 0)."""
    delay = np.nan_to_num(np.asarray(courier_delay, np.float64), nan=0.0)
    return np.searchsorted(np.asarray(DELAY_BANDS), delay, side="right").clip(1, len(DELAY_BANDS)) - 1


def error_summary(estimate: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Mean and p90 absolute error, share within +/-5 min and bias (estimate minus actual), minutes."""
    error = np.asarray(estimate, np.float64) - np.asarray(actual, np.float64)
    error = error[~np.isnan(error)]
    if len(error) == 0:
        return {"orders": 0, "mae": float("nan"), "p90_abs": float("nan"), "within_5": float("nan"),
                "bias": float("nan")}
    absolute = np.abs(error)
    return {"orders": int(len(error)), "mae": float(absolute.mean()), "p90_abs": float(np.percentile(absolute, 90)),
            "within_5": float((absolute <= 5.0).mean()), "bias": float(error.mean())}
