"""The MDRP evaluator's metrics for a replay, plus the share delivered within the target."""

from __future__ import annotations

import math

import numpy as np

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
    }


def _driving_minutes(inst: Instance, solution: Solution) -> np.ndarray:
    """Minutes each courier spends driving, summed over its moves."""
    driving = np.zeros(inst.n_couriers)
    for move in solution.moves:
        origin = label_position(inst, move.courier, move.origin)
        driving[move.courier] += inst.travel(*origin, *label_position(inst, move.courier, move.destination))
    return driving
