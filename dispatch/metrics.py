"""The MDRP evaluator's metrics for a replay, plus the share delivered within the target."""

from __future__ import annotations

import math

import numpy as np

from dispatch.eta import EtaCalibration, error_summary
from dispatch.mdrp import Instance
from dispatch.simulator import Solution, label_position


def _summary(values: np.ndarray) -> dict[str, float]:
    """mean, std, min, p10, median, p90, max (NaN when empty)."""
    if len(values) == 0:
        return {key: math.nan for key in ("mean", "std", "min", "p10", "median", "p90", "max")}
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "min": float(np.min(values)),
        "p10": float(np.percentile(values, 10)),
        "median": float(np.median(values)),
        "p90": float(np.percentile(values, 90)),
        "max": float(np.max(values)),
    }


def deliverable_orders(instance: Instance) -> np.ndarray:
    """Mask of orders some courier could pick up in time if it were free at its
    on-location: max(max(placed, on) + travel + half pickup service, ready) <= off."""
    restaurant = instance.order_restaurant
    travel = instance.travel(
        instance.courier_x[None, :], instance.courier_y[None, :],
        instance.restaurant_x[restaurant][:, None], instance.restaurant_y[restaurant][:, None],
    )
    start = np.maximum(instance.order_placed[:, None], instance.courier_on[None, :])
    pickup = np.maximum(start + travel + instance.pickup_service / 2, instance.order_ready[:, None])
    return (pickup <= instance.courier_off[None, :]).any(axis=1)


P99_TARGET = 75.0
"""Issue 14: p99 click-to-door at most this many minutes (unreachable where over 1% of floors exceed it)."""
ETA_MOMENTS = ("placement", "assignment", "pickup")


def click_to_door_floor(instance: Instance) -> np.ndarray:
    """Each order's fastest possible click-to-door: ready, half the pickup service, the drive to the
    door, half the drop-off service (no dispatcher can do better)."""
    r = instance.order_restaurant
    leg = instance.travel(instance.restaurant_x[r], instance.restaurant_y[r], instance.order_x, instance.order_y)
    return instance.order_ready - instance.order_placed + (instance.pickup_service + instance.dropoff_service) / 2 + leg


def tail_metrics(solution: Solution) -> dict:
    """The promise's tail: p99 and max click-to-door, and orders over the MDRP maximum whose own floor
    is not (``over_max_not_floor``; the target is none) next to those whose floor is over it too."""
    inst = solution.instance
    delivered = ~np.isnan(solution.dropoff_time)
    click_to_door = solution.dropoff_time - inst.order_placed
    floor = click_to_door_floor(inst)
    over = delivered & (click_to_door > inst.max_click_to_door)
    return {
        "click_to_door_p99": float(np.percentile(click_to_door[delivered], 99)) if delivered.any() else math.nan,
        "click_to_door_max": float(np.max(click_to_door[delivered])) if delivered.any() else math.nan,
        "over_max_not_floor": int((over & (floor <= inst.max_click_to_door)).sum()),
        "over_max_floor_too": int((over & (floor > inst.max_click_to_door)).sum()),
        "floor_over_p99_target": int((floor > P99_TARGET).sum()),
    }


def eta_metrics(solution: Solution, calibration: EtaCalibration) -> dict:
    """Error of the drop-off estimates given at placement (calibrated by ``calibration``, which must
    come from other days), at assignment and at pickup, against the actual drop-off of delivered
    orders (:func:`dispatch.eta.error_summary`), and the share of drop-offs inside the p10-p90 range."""
    delivered = ~np.isnan(solution.dropoff_time)
    actual = solution.dropoff_time[delivered]
    promise = calibration.promise(solution.eta_placement[delivered], solution.eta_placement_delay[delivered],
                                  solution.eta_placement_load[delivered])
    estimates = {"placement": promise.door, "assignment": solution.eta_assignment[delivered],
                 "pickup": solution.eta_pickup[delivered]}
    result = {moment: error_summary(estimates[moment], actual) for moment in ETA_MOMENTS}
    inside = (promise.door_p10 <= actual) & (actual <= promise.door_p90)
    result["placement_range_coverage"] = float(inside.mean()) if len(actual) else math.nan
    result["placement_raw"] = error_summary(solution.eta_placement[delivered], actual)
    return result


def placement_residuals(solution: Solution) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actual drop-off minus raw placement forecast, forecast courier delay, load) of delivered orders."""
    delivered = ~np.isnan(solution.dropoff_time)
    return ((solution.dropoff_time - solution.eta_placement)[delivered], solution.eta_placement_delay[delivered],
            solution.eta_placement_load[delivered])


def day_of(instance_name: str) -> str:
    """The MDRP base day of an instance (its leading digits: ``5o100t100s1p100`` -> ``"5"``)."""
    digits = len(instance_name) - len(instance_name.lstrip("0123456789"))
    return instance_name[:digits]


def held_out_calibrations(solutions: list[Solution]) -> dict[str, EtaCalibration]:
    """For each day among ``solutions``' instances, the calibration fitted on the residuals of every
    other day (never on the day it will score), plus ``"all"`` fitted on every day (for live use)."""
    by_day: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for solution in solutions:
        by_day.setdefault(day_of(solution.instance.name), []).append(placement_residuals(solution))

    def fit(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> EtaCalibration:
        if not parts:
            return EtaCalibration()
        return EtaCalibration.fit(*(np.concatenate(column) for column in zip(*parts)))

    result = {day: fit([p for other, parts in by_day.items() if other != day for p in parts]) for day in by_day}
    result["all"] = fit([p for parts in by_day.values() for p in parts])
    return result


def solution_metrics(solution: Solution) -> dict:
    """Evaluator metrics of ``solution`` as a JSON-ready dict."""
    inst = solution.instance
    delivered = ~np.isnan(solution.dropoff_time)
    click_to_door = (solution.dropoff_time - inst.order_placed)[delivered]
    shift_hours = (inst.courier_off - inst.courier_on) / 60.0
    orders_per_courier = np.bincount(solution.order_courier[delivered], minlength=inst.n_couriers)
    jobs_per_courier = np.bincount([a.courier for a in solution.assignments], minlength=inst.n_couriers)
    per_order_pay = inst.pay_per_order * orders_per_courier
    guaranteed = inst.pay_per_hour * shift_hours
    busy = _driving_minutes(inst, solution) + inst.pickup_service * jobs_per_courier
    busy += inst.dropoff_service * orders_per_courier
    deliverable = deliverable_orders(inst)
    return {
        "instance": inst.name,
        "policy": solution.policy,
        "orders": int(inst.n_orders),
        "deliverable_orders": int(deliverable.sum()),
        "orders_delivered": int(delivered.sum()),
        "delivered_share_of_deliverable": float(delivered[deliverable].sum() / max(1, deliverable.sum())),
        "within_target_share": float((click_to_door <= inst.target_click_to_door).sum() / max(1, inst.n_orders)),
        "total_payment": float(np.maximum(per_order_pay, guaranteed).sum()),
        "share_on_guaranteed_minimum": float((guaranteed > per_order_pay).mean()),
        "click_to_door": _summary(click_to_door),
        "click_to_door_overage": _summary(np.maximum(0.0, click_to_door - inst.target_click_to_door)),
        "ready_to_door": _summary((solution.dropoff_time - inst.order_ready)[delivered]),
        "ready_to_pickup": _summary((solution.pickup_time - inst.order_ready)[delivered]),
        "orders_per_courier_hour": _summary(orders_per_courier / shift_hours),
        "bundles_per_courier_hour": _summary(jobs_per_courier / shift_hours),
        "courier_utilization": _summary(busy / (shift_hours * 60.0)),
        "bundle_size": _summary(np.array([len(a.orders) for a in solution.assignments], np.float64)),
        "tail": tail_metrics(solution),
    }


def _driving_minutes(inst: Instance, solution: Solution) -> np.ndarray:
    """Minutes each courier spends driving, summed over its moves."""
    driving = np.zeros(inst.n_couriers)
    for move in solution.moves:
        origin = label_position(inst, move.courier, move.origin)
        driving[move.courier] += inst.travel(*origin, *label_position(inst, move.courier, move.destination))
    return driving
