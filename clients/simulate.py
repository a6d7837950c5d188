"""``hexdispatch simulate``: a live simulated city against a running server.

Drivers (websocket clients) stream GPS while moving at road speed, accept most
offers, pick up when the food is ready and deliver. Kitchens (restaurant
accounts, over HTTP) accept, cook and mark orders ready. Customers place
orders at nearby restaurants and follow them on their own websockets.

After the run it drains (drivers keep working until every placed order is
delivered or cancelled, or ``--drain`` runs out), then checks every
acknowledged order against the server's audit trail and prints a summary:
orders placed, delivered, cancelled, lost (acknowledged but missing, stuck, or
with status events the customer never received: must be 0), double
assignments (must be 0), placement-to-offer and GPS-to-customer latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
import uuid
from dataclasses import dataclass, field

import httpx
import numpy as np

from clients.customer import CustomerClient
from clients.driver import DriverClient
from clients.http import ApiClient, ApiError
from dispatch.geo import EARTH_RADIUS_M, haversine_m

DEFAULT_CENTER = (41.8781, -87.6298)  # Chicago Loop


@dataclass
class Metrics:
    placed: dict[int, float] = field(default_factory=dict)
    first_offer: dict[int, float] = field(default_factory=dict)
    delivered_by_driver: dict[int, str] = field(default_factory=dict)
    driver_double_bookings: int = 0
    gps_to_customer_ms: list[float] = field(default_factory=list)
    refused_placements: int = 0
    declines: int = 0
    job_failures: list[str] = field(default_factory=list)


def offset(point: tuple[float, float], metres: float, bearing_deg: float) -> tuple[float, float]:
    """The point ``metres`` away from ``point`` towards ``bearing_deg`` (small-distance approximation)."""
    dlat = metres * math.cos(math.radians(bearing_deg)) / EARTH_RADIUS_M
    dlng = metres * math.sin(math.radians(bearing_deg)) / (EARTH_RADIUS_M * math.cos(math.radians(point[0])))
    return point[0] + math.degrees(dlat), point[1] + math.degrees(dlng)


def random_point(rng: random.Random, center, radius_m: float) -> tuple[float, float]:
    return offset(center, radius_m * math.sqrt(rng.random()), rng.uniform(0, 360))


class SimDriver:
    """A driver app on a phone in a car: moves at ``speed_mps``, GPS every ``gps_interval_s``."""

    def __init__(self, base_url: str, token: str, driver_id: str, position, rng: random.Random, metrics: Metrics,
                 speed_mps: float, gps_interval_s: float, accept_rate: float):
        self.client = DriverClient(base_url, token)
        self.id = driver_id
        self.position = position
        self.rng = rng
        self.metrics = metrics
        self.speed_mps = speed_mps
        self.gps_interval_s = gps_interval_s
        self.accept_rate = accept_rate
        self.busy = False
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.client.__aenter__()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._gps_loop()), loop.create_task(self._work_loop())]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.client.__aexit__(None, None, None)

    async def _gps_loop(self) -> None:
        await asyncio.sleep(self.rng.uniform(0, self.gps_interval_s))
        while True:
            await self.client.gps(*self.position, speed=self.speed_mps)
            await asyncio.sleep(self.gps_interval_s)

    async def _drive_to(self, target) -> None:
        """Move in a straight line at road speed, reporting GPS along the way."""
        distance = haversine_m(*self.position, *target)
        steps = max(1, math.ceil(distance / (self.speed_mps * self.gps_interval_s)))
        start = self.position
        for i in range(1, steps + 1):
            await asyncio.sleep(distance / self.speed_mps / steps)
            f = i / steps
            self.position = (start[0] + (target[0] - start[0]) * f, start[1] + (target[1] - start[1]) * f)
            await self.client.gps(*self.position, speed=self.speed_mps)

    async def _work_loop(self) -> None:
        while True:
            message = await self.client.next("offer", "assigned", "cancelled", timeout_s=3600)
            if message["type"] == "offer":
                now = time.time()
                for order in message["orders"]:
                    self.metrics.first_offer.setdefault(order["order_id"], now)
                await asyncio.sleep(self.rng.uniform(0.1, 0.8))  # a human reads the offer
                if self.rng.random() < self.accept_rate:
                    await self.client.accept(message["offer_id"])
                else:
                    self.metrics.declines += 1
                    await self.client.decline(message["offer_id"])
            elif message["type"] == "assigned":
                if self.busy:
                    self.metrics.driver_double_bookings += 1
                self.busy = True
                try:
                    await self._do_job(message)
                except (asyncio.TimeoutError, KeyError, ValueError) as exc:
                    self.metrics.job_failures.append(f"{self.id}: {type(exc).__name__}: {exc}")
                finally:
                    self.busy = False

    async def _do_job(self, job: dict) -> None:
        restaurant = job["orders"][0]["restaurant"]
        await self._drive_to((restaurant["lat"], restaurant["lng"]))
        await self.client.at_restaurant(job["job_id"])
        ready_at = max(o["ready_at"] for o in job["orders"])
        await asyncio.sleep(max(0.0, ready_at - time.time()))
        await self.client.picked_up(job["job_id"])
        for order in job["orders"]:
            await self._drive_to((order["dropoff"]["lat"], order["dropoff"]["lng"]))
            await self.client.delivered(order["order_id"])
            self.metrics.delivered_by_driver[order["order_id"]] = self.id


async def kitchen(api: ApiClient, order: dict, prep_s: float) -> None:
    """A restaurant working one order: accept, cook for ``prep_s``, mark it ready."""
    await kitchen_step(api, order["id"], "accept")
    await kitchen_step(api, order["id"], "start-preparing")
    await asyncio.sleep(prep_s)
    await kitchen_step(api, order["id"], "ready")


async def kitchen_step(api: ApiClient, order_id: int, action: str, attempts: int = 3) -> None:
    """One kitchen click, retried over a dropped keep-alive connection."""
    for attempt in range(attempts):
        try:
            await api.kitchen(order_id, action)
            return
        except ApiError as exc:
            if exc.code == "illegal_transition":  # a retry landed twice, or the driver already picked up
                return
            raise
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)


async def seed_city(base_url: str, mint, rng: random.Random, center, radius_m: float, n_restaurants: int,
                    prep_minutes: int) -> list[tuple[dict, list[dict], ApiClient]]:
    restaurants = []
    for i in range(n_restaurants):
        owner = ApiClient(base_url, mint("restaurant", f"sim-kitchen-{uuid.uuid4().hex[:8]}"))
        lat, lng = random_point(rng, center, radius_m)
        rest = await owner.create_restaurant(
            name=f"Sim Kitchen {i}", address=f"{i} Simulation Ave", latitude=lat, longitude=lng,
            prep_minutes=prep_minutes, cuisine_tags=[rng.choice(["pizza", "thai", "burgers", "sushi"])],
        )
        items = [await owner.add_item(rest["id"], f"Dish {j}", rng.randrange(600, 2500)) for j in range(5)]
        restaurants.append((rest, items, owner))
    return restaurants


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    array = np.asarray(values)
    return {"n": len(values), "p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "max": float(array.max())}


async def audit(admin: ApiClient, metrics: Metrics, customers: dict[int, CustomerClient]) -> dict:
    """Check every acknowledged order against the server's audit trail."""
    counts = {"delivered": 0, "cancelled": 0, "in_flight": 0, "missing": 0, "double_assigned": 0,
              "lost_status_events": 0}
    for order_id in metrics.placed:
        try:
            events = await admin.events(order_id)
        except ApiError:
            counts["missing"] += 1
            continue
        final = events[-1]["status"] if events else None
        if final == "delivered":
            counts["delivered"] += 1
        elif final == "cancelled":
            counts["cancelled"] += 1
        else:
            counts["in_flight"] += 1
        holding = 0
        for event in events:
            if event["type"] == "assign":
                holding += 1
                if holding > 1:
                    counts["double_assigned"] += 1
            elif event["type"] == "unassign":
                holding -= 1
        seen = [e["seq"] for e in customers[order_id].events[order_id]]
        counts["lost_status_events"] += len({e["seq"] for e in events} - set(seen))
    counts["lost"] = counts["missing"] + counts["in_flight"] + counts["lost_status_events"]
    return counts


async def run(args) -> dict:
    from server.auth import mint_token
    from server.config import Settings

    secret = Settings.from_env().resolved_jwt_secret()

    def mint(role: str, sub: str) -> str:
        return mint_token(secret, role, sub, now=int(time.time()), ttl_s=24 * 3600)

    rng = random.Random(args.seed)
    center = (args.lat, args.lng)
    metrics = Metrics()
    print(f"seeding {args.restaurants} restaurants around {center} ...", flush=True)
    city = await seed_city(args.server, mint, rng, center, args.radius_m, args.restaurants, args.prep_minutes)
    drivers = [
        SimDriver(args.server, mint("driver", f"sim-driver-{i}-{uuid.uuid4().hex[:6]}"), f"sim-driver-{i}",
                  random_point(rng, center, args.radius_m), rng, metrics, args.speed_kmh / 3.6, args.gps_interval,
                  args.accept_rate)
        for i in range(args.drivers)
    ]
    print(f"connecting {len(drivers)} drivers ...", flush=True)
    for chunk in range(0, len(drivers), 50):
        await asyncio.gather(*(d.start() for d in drivers[chunk:chunk + 50]))
    customers: dict[int, CustomerClient] = {}
    customer_clients: list[CustomerClient] = []
    kitchens: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()

    async def place_one() -> None:
        customer_id = f"sim-customer-{uuid.uuid4().hex[:10]}"
        home = random_point(rng, center, args.radius_m)
        rest, items, owner = min(city, key=lambda r: haversine_m(*home, r[0]["location"]["lat"], r[0]["location"]["lng"])
                                 + rng.uniform(0, 800))
        follower = CustomerClient(args.server, mint("customer", customer_id))
        await follower.__aenter__()
        customer_clients.append(follower)
        api = ApiClient(args.server, mint("customer", customer_id))
        try:
            order = await api.place_order(rest["id"], [{"item_id": rng.choice(items)["id"], "quantity": 1}], home)
        except ApiError:
            metrics.refused_placements += 1
            return
        finally:
            await api.aclose()
        metrics.placed[order["id"]] = time.time()
        customers[order["id"]] = follower
        await follower.follow(order["id"])
        task = loop.create_task(kitchen(owner, order, args.prep_minutes * 60))
        kitchens.add(task)
        task.add_done_callback(kitchens.discard)

    def delivered_here() -> int:
        """Orders of this run delivered (drivers may also finish orders left by earlier runs)."""
        return sum(1 for order_id in metrics.placed if order_id in metrics.delivered_by_driver)

    started = time.time()
    interval = 60.0 / args.orders_per_minute
    placements: set[asyncio.Task] = set()
    print(f"running for {args.duration:.0f} s at {args.orders_per_minute} orders/min ...", flush=True)
    next_report = started + 10
    while time.time() - started < args.duration:
        task = loop.create_task(place_one())
        placements.add(task)
        task.add_done_callback(placements.discard)
        await asyncio.sleep(rng.expovariate(1 / interval))
        if time.time() >= next_report:
            next_report += 10
            print(f"  t={time.time() - started:5.0f}s placed={len(metrics.placed)} "
                  f"delivered={delivered_here()}", flush=True)
    await asyncio.gather(*placements, return_exceptions=True)
    print(f"draining (up to {args.drain:.0f} s) ...", flush=True)
    drain_until = time.time() + args.drain
    while time.time() < drain_until and delivered_here() < len(metrics.placed):
        await asyncio.sleep(1)
        if time.time() >= next_report:
            next_report += 10
            print(f"  t={time.time() - started:5.0f}s placed={len(metrics.placed)} "
                  f"delivered={delivered_here()}", flush=True)
    await asyncio.sleep(2)  # let the last status events reach the customers

    for follower in customer_clients:
        for position_list in follower.positions.values():
            metrics.gps_to_customer_ms += [(p["received_at"] * 1000 - p["fix_t"]) for p in position_list if p.get("fix_t")]
    admin = ApiClient(args.server, mint("admin", "sim-auditor"))
    counts = await audit(admin, metrics, customers)
    await admin.aclose()
    for driver in drivers:
        await driver.stop()
    for follower in customer_clients:
        await follower.__aexit__(None, None, None)
    for task in kitchens:
        task.cancel()

    driver_errors: dict[str, int] = {}
    for driver in drivers:
        for error in driver.client.errors:
            driver_errors[error["code"]] = driver_errors.get(error["code"], 0) + 1
    offer_latency = [(metrics.first_offer[o] - t) * 1000 for o, t in metrics.placed.items() if o in metrics.first_offer]
    return {
        "drivers": args.drivers, "orders_per_minute": args.orders_per_minute, "duration_s": args.duration,
        "orders_placed": len(metrics.placed), "orders_refused": metrics.refused_placements,
        "delivered": counts["delivered"], "cancelled": counts["cancelled"], "in_flight": counts["in_flight"],
        "lost": counts["lost"], "lost_status_events": counts["lost_status_events"],
        "double_assignments": counts["double_assigned"] + metrics.driver_double_bookings,
        "declined_offers": metrics.declines,
        "driver_errors": driver_errors,
        "driver_job_failures": len(metrics.job_failures),
        "placement_to_offer_ms": percentiles(offer_latency),
        "gps_to_customer_ms": percentiles(metrics.gps_to_customer_ms),
    }


def print_summary(summary: dict) -> None:
    print("\nsimulation summary")
    for key, value in summary.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        print(f"  {key:24s} {value}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hexdispatch simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--drivers", type=int, default=50)
    parser.add_argument("--orders-per-minute", type=float, default=30)
    parser.add_argument("--duration", type=float, default=60, help="seconds of order placement")
    parser.add_argument("--drain", type=float, default=300, help="seconds to let open orders finish")
    parser.add_argument("--restaurants", type=int, default=20)
    parser.add_argument("--prep-minutes", type=int, default=1)
    parser.add_argument("--radius-m", type=float, default=1500, help="size of the simulated city")
    parser.add_argument("--speed-kmh", type=float, default=36)
    parser.add_argument("--gps-interval", type=float, default=5.0)
    parser.add_argument("--accept-rate", type=float, default=0.9)
    parser.add_argument("--lat", type=float, default=DEFAULT_CENTER[0])
    parser.add_argument("--lng", type=float, default=DEFAULT_CENTER[1])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args(argv)
    summary = asyncio.run(run(args))
    print_summary(summary)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    return 0 if summary["lost"] == 0 and summary["double_assignments"] == 0 else 1
