"""MDRP (Grubhub Meal Delivery Routing Problem) instances, parsed from already-read text."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Mapping

import numpy as np

INSTANCE_FILES = ("instance_parameters.txt", "restaurants.txt", "orders.txt", "couriers.txt")


@dataclass(frozen=True)
class Instance:
    """One MDRP day. Coordinates in metres, times in integer minutes (as float64)."""

    name: str
    metres_per_minute: float
    pickup_service: float
    dropoff_service: float
    target_click_to_door: float
    max_click_to_door: float
    pay_per_order: float
    pay_per_hour: float
    restaurant_ids: tuple[str, ...]
    restaurant_x: np.ndarray
    restaurant_y: np.ndarray
    order_ids: tuple[str, ...]
    order_x: np.ndarray
    order_y: np.ndarray
    order_placed: np.ndarray
    order_restaurant: np.ndarray
    order_ready: np.ndarray
    courier_ids: tuple[str, ...]
    courier_x: np.ndarray
    courier_y: np.ndarray
    courier_on: np.ndarray
    courier_off: np.ndarray

    @property
    def n_orders(self) -> int:
        return len(self.order_ids)

    @property
    def n_couriers(self) -> int:
        return len(self.courier_ids)

    @cached_property
    def restaurant_index(self) -> dict[str, int]:
        return {rid: i for i, rid in enumerate(self.restaurant_ids)}

    @cached_property
    def order_index(self) -> dict[str, int]:
        return {oid: i for i, oid in enumerate(self.order_ids)}

    def travel(self, from_x, from_y, to_x, to_y):
        """MDRP travel minutes, ceil(euclidean metres / metres per minute), scalar or numpy.

        Written independently of the matcher kernels so that the feasibility
        checker does not trust the code it checks.
        """
        dx = np.asarray(to_x, np.float64) - from_x
        dy = np.asarray(to_y, np.float64) - from_y
        return np.ceil(np.sqrt(dx * dx + dy * dy) / self.metres_per_minute)

    def first_orders(self, n_orders: int) -> "Instance":
        """The same day restricted to its ``n_orders`` earliest-placed orders (for small tests)."""
        keep = np.sort(np.argsort(self.order_placed, kind="mergesort")[:n_orders])
        return replace(
            self,
            name=f"{self.name}-first{n_orders}",
            order_ids=tuple(self.order_ids[i] for i in keep),
            order_x=self.order_x[keep],
            order_y=self.order_y[keep],
            order_placed=self.order_placed[keep],
            order_restaurant=self.order_restaurant[keep],
            order_ready=self.order_ready[keep],
        )


def _rows(text: str) -> list[list[str]]:
    lines = [line.split() for line in text.strip().splitlines()[1:]]
    return [row for row in lines if row]


def parse_instance(name: str, texts: Mapping[str, str]) -> Instance:
    """Build an :class:`Instance` from the contents of its files, keyed by file name."""
    (parameters,) = _rows(texts["instance_parameters.txt"])
    mpm, pickup, dropoff, target, maximum, per_order, per_hour = (float(v) for v in parameters)
    restaurants = _rows(texts["restaurants.txt"])
    restaurant_index = {row[0]: i for i, row in enumerate(restaurants)}
    orders = _rows(texts["orders.txt"])
    couriers = _rows(texts["couriers.txt"])

    def column(rows: list[list[str]], i: int) -> np.ndarray:
        return np.array([float(row[i]) for row in rows], np.float64)

    return Instance(
        name=name,
        metres_per_minute=mpm,
        pickup_service=pickup,
        dropoff_service=dropoff,
        target_click_to_door=target,
        max_click_to_door=maximum,
        pay_per_order=per_order,
        pay_per_hour=per_hour,
        restaurant_ids=tuple(row[0] for row in restaurants),
        restaurant_x=column(restaurants, 1),
        restaurant_y=column(restaurants, 2),
        order_ids=tuple(row[0] for row in orders),
        order_x=column(orders, 1),
        order_y=column(orders, 2),
        order_placed=column(orders, 3),
        order_restaurant=np.array([restaurant_index[row[4]] for row in orders], np.int64),
        order_ready=column(orders, 5),
        courier_ids=tuple(row[0] for row in couriers),
        courier_x=column(couriers, 1),
        courier_y=column(couriers, 2),
        courier_on=column(couriers, 3),
        courier_off=column(couriers, 4),
    )
