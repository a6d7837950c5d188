"""The delivery-time promise: when an order will be picked up and reach the door, with a range.

Pure, like the matcher: the cell's live state in (the same :class:`~dispatch.matcher.Drivers` and
:class:`~dispatch.matcher.Orders` arrays the matcher takes, ``now`` an argument), numbers out::

    from dispatch.eta import forecast, EtaCalibration

    raw = forecast(now, drivers, pending_orders, travel, params)   # every pending order at once
    promise = calibration.promise(raw.door, raw.courier_delay, raw.load)   # door time p10 / point / p90
    promise.door[i], promise.door_p10[i], promise.door_p90[i]       # minutes, same origin as ``now``
    raw.arrival[i]                                                  # the courier's expected arrival at the restaurant

:func:`forecast` replays, in one pass, what the matcher will do with the cell's pending orders:
orders in ready-time order, each joining a bundle by the bundler's rules or going to the driver the
matcher's cost prefers (busy drivers from when and where their job ends, as in matching), that
driver then busy with it until it has left the door (numba kernel :func:`dispatch.kernels.forecast_jobs`,
with its plain-Python twin). It cannot know orders not placed yet (it replays recent ones as
expected, see :func:`expected_orders`), and the matcher
may choose otherwise; :class:`EtaCalibration` corrects the point and gives the range from residuals
measured on other days, in bands of the forecast's courier delay (pickup minus ready time) and of
the cell's load, since the error grows with scarcity.

Once an order is committed, its times are the job's own plan, :func:`dispatch.matcher.job_times`
(from the driver's position at assignment, from the restaurant at pickup).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from dispatch import kernels
from dispatch.matcher import Drivers, MatchParams, Orders, TravelModel

DELAY_BANDS = (0.0, 1.0, 5.0, 10.0, 20.0, 40.0)
"""Lower edges (minutes of forecast courier delay: pickup minus ready) of the calibration bands."""
EXPECTED_WINDOW = 20.0
"""Minutes of recent orders replayed as the orders to expect (:func:`expected_orders`). Chosen on the
twelve o100t100*p100 days (0.001, 20, 30 and 40 tried): it removes most of the forecast's early bias."""
ORDER_FIELDS = tuple(field.name for field in fields(Orders))
LOAD_BANDS = (0.0, 1.0)
"""Lower edges of the calibration's load bands (pending orders per driver free within the matcher's
lookahead: from 1 on, the matcher counts drivers as scarce)."""
MIN_BAND_ORDERS = 50
"""A band with fewer calibration residuals than this borrows the pooled residuals of every band."""
LIVE_CALIBRATION_PATH = Path(__file__).with_name("eta_calibration.json")
"""The calibration live cells promise with: fitted on every o100t100*p100 day of days 0-5 (written by
``python -m bench.mdrp_quality``)."""
JOB_SPREAD = 0.2
"""Once a courier has the order, the range is the plan's remaining minutes +/- this share (plus
:data:`JOB_SPREAD_FLOOR`): what is left to go wrong is the drive, not the queue."""
JOB_SPREAD_FLOOR = 1.0


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
    load: float
    """Pending orders per driver free within the matcher's lookahead (its scarcity measure)."""

    @property
    def courier_delay(self) -> np.ndarray:
        """Minutes the food is expected to wait for its courier (pickup minus ready time)."""
        return self.pickup - self.ready


def forecast(now: float, drivers: Drivers, orders: Orders, travel: TravelModel,
             params: MatchParams = MatchParams(), expected: Orders | None = None) -> Forecast:
    """Pickup, door and courier-arrival times of every pending order, from the cell's state at ``now``.

    ``expected`` orders (:func:`expected_orders`) are not forecast but compete for the drivers: orders
    placed after an order but ready before it will be served first."""
    n_pending, ready, load, (_, arrival, pickup, door, *_) = virtual_dispatch(now, drivers, orders, travel, params,
                                                                              expected)
    return Forecast(arrival=arrival[:n_pending], pickup=pickup[:n_pending], door=door[:n_pending],
                    ready=ready[:n_pending], load=load)


def virtual_dispatch(now: float, drivers: Drivers, orders: Orders, travel: TravelModel,
                     params: MatchParams = MatchParams(), expected: Orders | None = None) -> tuple:
    """:func:`dispatch.kernels.forecast_jobs` on a cell's state, as :func:`forecast` runs it: returns (number of
    pending orders, ready times of the pending then the expected orders, load, the kernel's outputs)."""
    n_pending = len(orders.ready_at)
    if expected is not None and len(expected.ready_at):
        orders = Orders(*(np.concatenate([np.asarray(getattr(orders, f)), np.asarray(getattr(expected, f))])
                          for f in ORDER_FIELDS))
    ready = np.ascontiguousarray(orders.ready_at, np.float64)
    sequence = np.lexsort((np.arange(len(ready)), ready)).astype(np.int64)
    pool = np.count_nonzero((drivers.free_at <= now + params.lookahead) & (drivers.shift_end >= now))
    load = n_pending / max(pool, 1)
    scarce = load >= params.bundle_scarcity_ratio
    outputs = kernels.forecast_jobs(
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
    return n_pending, ready, load, outputs


def warm_up() -> None:
    """Load (or compile) the forecast kernel, so that a cell's first promise does not wait for it."""
    one = np.zeros(1)
    forecast(0.0, Drivers(one, one, one, np.ones(1, np.int64), np.ones(1)),
             Orders(one, one, one, one, one, one, np.zeros(1, np.int64)), TravelModel.great_circle())


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
    """Residuals (actual door time minus raw forecast) per band of forecast courier delay and of load.

    ``offsets[load_band * len(DELAY_BANDS) + delay_band]`` holds (p10, mean, p90) minutes (edges:
    :data:`LOAD_BANDS`, :data:`DELAY_BANDS`). The point is the mean, so that the promise is unbiased
    where the calibration days are alike; the range is p10-p90. The identity calibration (all zeros)
    promises the raw forecast with an empty range."""

    offsets: tuple[tuple[float, float, float], ...] = tuple(
        (0.0, 0.0, 0.0) for _ in range(len(LOAD_BANDS) * len(DELAY_BANDS)))

    @classmethod
    def fit(cls, residuals: np.ndarray, courier_delay: np.ndarray, load: np.ndarray) -> "EtaCalibration":
        """Offsets from ``residuals`` (of days other than the one scored) per band of ``courier_delay``
        and ``load``; a band with too few borrows its delay band over all loads, or all residuals."""
        residuals = np.asarray(residuals, np.float64)
        cell = band_of(courier_delay, load)
        delay_band = cell % len(DELAY_BANDS)

        def offset(values: np.ndarray) -> tuple[float, float, float]:
            if len(values) == 0:
                return 0.0, 0.0, 0.0
            p10, p90 = np.percentile(values, (10, 90))
            return float(p10), float(np.mean(values)), float(p90)

        offsets = []
        for c in range(len(LOAD_BANDS) * len(DELAY_BANDS)):
            for values in (residuals[cell == c], residuals[delay_band == c % len(DELAY_BANDS)], residuals):
                if len(values) >= MIN_BAND_ORDERS or values is residuals:
                    offsets.append(offset(values))
                    break
        return cls(tuple(offsets))

    def promise(self, door: np.ndarray, courier_delay: np.ndarray, load: np.ndarray) -> Promise:
        """The calibrated promise for raw door times, courier delays and loads (``Forecast.door``,
        ``Forecast.courier_delay``, ``Forecast.load``); NaN where ``door`` is."""
        door = np.asarray(door, np.float64)
        table = np.asarray(self.offsets, np.float64)[band_of(courier_delay, load)]
        return Promise(door=door + table[:, 1], door_p10=door + table[:, 0], door_p90=door + table[:, 2])

    def to_json(self) -> dict:
        return {"load_bands": list(LOAD_BANDS), "delay_bands": list(DELAY_BANDS),
                "offsets_p10_mean_p90": [list(o) for o in self.offsets]}

    @classmethod
    def from_json(cls, data: dict) -> "EtaCalibration":
        """Inverse of :meth:`to_json`; refuses a table made for other bands."""
        if tuple(data["delay_bands"]) != DELAY_BANDS or tuple(data["load_bands"]) != LOAD_BANDS:
            raise ValueError(f"calibration bands {data['load_bands']} x {data['delay_bands']} differ from "
                             f"{list(LOAD_BANDS)} x {list(DELAY_BANDS)}")
        return cls(tuple(tuple(float(v) for v in o) for o in data["offsets_p10_mean_p90"]))


def band_of(courier_delay: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Calibration band index of each (forecast courier delay, load) pair; NaN and negatives count as 0."""
    def index(values, edges) -> np.ndarray:
        values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0)
        return np.searchsorted(np.asarray(edges), values, side="right").clip(1, len(edges)) - 1

    return index(load, LOAD_BANDS) * len(DELAY_BANDS) + index(courier_delay, DELAY_BANDS)


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


def live_calibration(path: Path = LIVE_CALIBRATION_PATH) -> EtaCalibration:
    """The calibration a live cell promises with (:data:`LIVE_CALIBRATION_PATH`)."""
    return EtaCalibration.from_json(json.loads(path.read_text()))


@dataclass(frozen=True)
class Estimate:
    """One delivery-time estimate given for an order, in unix seconds.

    ``basis`` says what it rests on: ``queue`` (a forecast of the cell's queue: no courier yet),
    ``job`` (the assigned courier's plan, food not picked up), ``on_board`` (food picked up)."""

    given_at: float
    basis: str
    dropoff_at: float
    dropoff_early: float
    dropoff_late: float
    pickup_at: float | None
    courier_arrival_at: float | None

    def to_json(self) -> dict:
        """The estimate as the API, status events and the audit trail carry it (times rounded to 0.1 s)."""
        def t(v: float | None) -> float | None:
            return None if v is None or v != v else round(v, 1)

        return {"given_at": t(self.given_at), "basis": self.basis, "dropoff_at": t(self.dropoff_at),
                "dropoff_early": t(self.dropoff_early), "dropoff_late": t(self.dropoff_late),
                "pickup_at": t(self.pickup_at), "courier_arrival_at": t(self.courier_arrival_at)}

    @classmethod
    def from_json(cls, data: dict) -> "Estimate":
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def moved(self, other: "Estimate", threshold_s: float) -> bool:
        """Whether a customer holding ``other`` should be told this one: a new basis, or a drop-off
        time at least ``threshold_s`` away."""
        return self.basis != other.basis or abs(self.dropoff_at - other.dropoff_at) >= threshold_s


def queue_estimates(now_s: float, raw: Forecast, calibration: EtaCalibration, handover: float = 0.0,
                    time_scale: float = 1.0) -> list[Estimate]:
    """Calibrated estimates (unix seconds) of the orders of :func:`forecast` made at ``now_s``
    (its times in minutes). An order no courier can take gets the earliest its food allows.
    The drop-off is ``handover`` minutes after arriving at the door (the MDRP's: half the drop-off service).
    ``time_scale``: real minutes per forecast minute (a day replayed k times faster: k), since the calibration's
    bands and residuals are real minutes."""
    real = calibration.promise((raw.door + handover) * time_scale, raw.courier_delay * time_scale,
                               np.full(len(raw.door), raw.load))
    promise = Promise(real.door / time_scale, real.door_p10 / time_scale, real.door_p90 / time_scale)
    # Nothing arrives before the food is ready and driven there, whatever the residuals of other days say.
    floor = np.maximum(raw.ready, now_s / 60.0) + (raw.door + handover - raw.pickup)
    door, early = np.maximum(promise.door, floor), np.maximum(promise.door_p10, floor)
    late = np.maximum(promise.door_p90, door)
    seconds = 60.0
    return [Estimate(given_at=now_s, basis="queue", dropoff_at=float(door[i]) * seconds,
                     dropoff_early=float(early[i]) * seconds, dropoff_late=float(late[i]) * seconds,
                     pickup_at=float(raw.pickup[i]) * seconds,
                     courier_arrival_at=None if np.isnan(raw.arrival[i]) else float(raw.arrival[i]) * seconds)
            for i in range(len(raw.door))]


def plan_estimate(now_s: float, dropoff_min: float, pickup_min: float | None, arrival_min: float | None,
                  time_scale: float = 1.0) -> Estimate:
    """The estimate from an assigned courier's plan (minutes; ``pickup_min`` None once the food is on board),
    with a range of :data:`JOB_SPREAD` of the plan's remaining minutes (``time_scale`` as in :func:`queue_estimates`)."""
    dropoff_s = dropoff_min * 60.0
    spread = (JOB_SPREAD * max(0.0, dropoff_s - now_s) / 60.0 + JOB_SPREAD_FLOOR / time_scale) * 60.0
    return Estimate(given_at=now_s, basis="on_board" if pickup_min is None else "job", dropoff_at=dropoff_s,
                    dropoff_early=max(now_s, dropoff_s - spread), dropoff_late=dropoff_s + spread,
                    pickup_at=None if pickup_min is None else pickup_min * 60.0,
                    courier_arrival_at=None if arrival_min is None else arrival_min * 60.0)
