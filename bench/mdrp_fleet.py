"""The world around the live server in ``hexdispatch bench mdrp``: an MDRP day played on a fast clock.

* :class:`Clock` maps instance minutes to wall seconds (``speedup`` times faster)
  and :class:`Projection` MDRP metres to latitude/longitude around a reference
  point (small enough for great-circle distance to equal euclidean distance).
* :class:`LiveCourier` is a driver app: it connects at its shift start, streams
  GPS, accepts every offer it can pick up before its shift ends (declines the
  rest), drives in straight lines taking the MDRP travel time
  (``ceil(metres / metres per minute)``), waits the service times, and signs off
  once idle after its shift.
* :class:`Kitchens` places each order at its placement time over HTTP (one
  customer per order) and works it like a restaurant: accept, start preparing,
  revise the ready estimate (in seconds), mark ready at the MDRP ready time.
* :func:`jobs_from_audit` and :func:`live_solution` turn the server's audit trail
  back into an MDRP :class:`~dispatch.simulator.Solution`.

Each step of a courier is scheduled from the server's confirmation of the step
before it (the ``assigned`` message, the ``ack`` of a pick-up or drop-off), so
every time the audit trail records is at or after the MDRP time the solution
derives from it: the solution is feasible by construction, and the lag between
the two is measured (``dropoff_lag``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np

from clients.driver import DriverClient
from clients.http import ApiClient, ApiError
from dispatch.geo import EARTH_RADIUS_M
from dispatch.mdrp import Instance
from dispatch.simulator import ON_LOCATION, AssignmentRecord, CourierMove, Solution, label_position

#: Wall seconds a courier allows between deciding on an offer and the server recording what follows;
#: it never plans a pickup closer than this to its shift end.
REPLY_ALLOWANCE_S = 1.0
#: How long a courier whose sign-off was refused waits for the offer that came first.
RACED_OFFER_WAIT_S = 5.0
#: The API's longest ready estimate (``ready_in_seconds``).
MAX_READY_IN_S = 14_400


@dataclass(frozen=True)
class Clock:
    """Instance minute ``origin`` is wall time ``start``; the day runs ``speedup`` times faster."""

    start: float
    origin: float
    speedup: float

    def wall(self, minutes: float) -> float:
        return self.start + (minutes - self.origin) * 60.0 / self.speedup

    def minutes(self, wall: float) -> float:
        return self.origin + (wall - self.start) * self.speedup / 60.0

    def seconds(self, minutes: float) -> float:
        """Wall seconds lasting ``minutes`` instance minutes."""
        return minutes * 60.0 / self.speedup


@dataclass(frozen=True)
class Projection:
    """MDRP metres (x east, y north) to degrees, with (x0, y0) at (lat0, lng0)."""

    lat0: float
    lng0: float
    x0: float
    y0: float

    def latlng(self, x: float, y: float) -> tuple[float, float]:
        lat = self.lat0 + math.degrees((y - self.y0) / EARTH_RADIUS_M)
        lng = self.lng0 + math.degrees((x - self.x0) / (EARTH_RADIUS_M * math.cos(math.radians(self.lat0))))
        return lat, lng


async def sleep_until(wall: float) -> None:
    await asyncio.sleep(max(0.0, wall - time.time()))


@dataclass
class FleetStats:
    """What the couriers and kitchens saw (for the report)."""

    offers: int = 0
    declined_for_shift_end: int = 0
    late_accepts: int = 0
    jobs_taken_back: int = 0
    step_lateness_s: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    delivered: set[int] = field(default_factory=set)
    placement_errors: list[str] = field(default_factory=list)
    kitchen_errors: list[str] = field(default_factory=list)


class World:
    """What couriers and kitchens share: the instance, clock, map, server and the order ids."""

    def __init__(self, instance: Instance, clock: Clock, projection: Projection, base_url: str, mint):
        self.instance = instance
        self.clock = clock
        self.projection = projection
        self.base_url = base_url
        self.mint = mint
        self.stats = FleetStats()
        self.order_of_server_id: dict[int, asyncio.Future] = {}
        self.server_id: dict[int, int] = {}

    def _future(self, server_id: int) -> asyncio.Future:
        if server_id not in self.order_of_server_id:
            self.order_of_server_id[server_id] = asyncio.get_running_loop().create_future()
        return self.order_of_server_id[server_id]

    def register(self, order: int, server_id: int) -> None:
        self.server_id[order] = server_id
        future = self._future(server_id)
        if not future.done():
            future.set_result(order)

    async def instance_order(self, server_id: int) -> int:
        """The instance index of a server order (an offer may arrive before the placement's response)."""
        return await asyncio.wait_for(asyncio.shield(self._future(server_id)), 30)


class LiveCourier:
    """One MDRP courier as a driver app on the live server (see the module docstring)."""

    def __init__(self, world: World, courier: int, gps_interval_s: float):
        self.world = world
        self.c = courier
        self.id = driver_id(world.instance, courier)
        self.gps_interval_s = gps_interval_s
        inst = world.instance
        self.x, self.y = float(inst.courier_x[courier]), float(inst.courier_y[courier])
        self.leg: tuple[float, float, float, float, float, float] | None = None
        self.gps_paused = False
        self.offline = False
        self.busy_until = 0.0
        self.client: DriverClient | None = None
        self.replies: asyncio.Queue = asyncio.Queue()
        self.work: asyncio.Queue = asyncio.Queue()

    # Plumbing ------------------------------------------------------------------

    async def sign_up(self, http: httpx.AsyncClient, capacity: int) -> None:
        """Register the driver's profile: a car carrying up to ``capacity`` orders per job."""
        api = ApiClient(self.world.base_url, self.world.mint("driver", self.id), client=http)
        await api.call("PUT", "/v1/drivers/me", json={"vehicle": "car", "capacity": capacity})

    async def run(self) -> None:
        inst, clock = self.world.instance, self.world.clock
        await sleep_until(clock.wall(float(inst.courier_on[self.c])))
        self.client = DriverClient(self.world.base_url, self.world.mint("driver", self.id))
        await self.client.__aenter__()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._read()), loop.create_task(self._gps_loop())]
        try:
            await self._gps()  # on duty at the on-location
            await self._work(clock.wall(float(inst.courier_off[self.c])))
        finally:
            for task in tasks:
                task.cancel()
            await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        while True:
            message = await self.client.inbox.get()
            kind = message.get("type")
            if kind in ("ack", "error"):
                await self.replies.put((message, time.time()))
            elif kind in ("offer", "assigned"):
                await self.work.put(message)
            elif kind in ("offer_withdrawn", "job_withdrawn", "cancelled", "closed"):
                self.world.stats.errors[kind] += 1

    async def _command(self, message: dict) -> tuple[bool, float]:
        """Send a reply or report; (acknowledged, wall time of the answer)."""
        await self.client.link.send(message)
        reply, at = await asyncio.wait_for(self.replies.get(), 30)
        if reply["type"] == "error":
            self.world.stats.errors[f"{message['type']}:{reply.get('code')}"] += 1
            return False, at
        return True, at

    def _position(self, now: float) -> tuple[float, float]:
        if self.leg is None:
            return self.x, self.y
        x0, y0, x1, y1, t0, t1 = self.leg
        f = min(1.0, max(0.0, (now - t0) / (t1 - t0))) if t1 > t0 else 1.0
        return x0 + (x1 - x0) * f, y0 + (y1 - y0) * f

    async def _gps(self) -> None:
        lat, lng = self.world.projection.latlng(*self._position(time.time()))
        await self.client.gps(lat, lng)

    async def _gps_loop(self) -> None:
        while True:
            await asyncio.sleep(self.gps_interval_s)
            if not self.gps_paused:
                await self._gps()

    async def _step_at(self, wall: float) -> None:
        """Sleep until a step of a job is due; how late the event loop wakes us is recorded."""
        await sleep_until(wall)
        self.world.stats.step_lateness_s.append(max(0.0, time.time() - wall))

    async def _drive(self, x: float, y: float, depart: float) -> float:
        """Drive in a straight line for the MDRP travel time; returns the arrival (wall)."""
        minutes = float(self.world.instance.travel(self.x, self.y, x, y))
        arrive = depart + self.world.clock.seconds(minutes)
        self.leg = (self.x, self.y, x, y, depart, arrive)
        await self._step_at(arrive)
        self.x, self.y, self.leg = x, y, None
        await self._gps()
        return arrive

    # Work ----------------------------------------------------------------------

    async def _work(self, off_wall: float) -> None:
        while True:
            remaining = off_wall - time.time()
            if remaining > 0 or not self.work.empty():
                try:
                    message = await asyncio.wait_for(self.work.get(), remaining if remaining > 0 else None)
                except asyncio.TimeoutError:
                    continue
            elif self.offline or await self._sign_off():
                return
            else:  # an offer came first: answer it, then sign off again
                try:
                    message = await asyncio.wait_for(self.work.get(), RACED_OFFER_WAIT_S)
                except asyncio.TimeoutError:
                    return
            if message["type"] == "offer":
                await self._consider(message)
            else:
                await self._job(message)

    async def _sign_off(self) -> bool:
        """Go offline (only possible while idle, not while an offer is open); True if done."""
        self.gps_paused = True
        self.offline, _ = await self._command({"type": "offline"})
        self.gps_paused = self.offline
        return self.offline

    async def _consider(self, offer: dict) -> None:
        """Accept when the pickup can happen before the shift ends (MDRP rule), else decline."""
        world, inst, clock = self.world, self.world.instance, self.world.clock
        world.stats.offers += 1
        orders = [await world.instance_order(o["order_id"]) for o in offer["orders"]]
        start = max(time.time(), self.busy_until)
        r = int(inst.order_restaurant[orders[0]])
        travel = float(inst.travel(self.x, self.y, inst.restaurant_x[r], inst.restaurant_y[r]))
        pickup = max(clock.minutes(start) + travel + inst.pickup_service / 2, max(inst.order_ready[o] for o in orders))
        if pickup + clock.speedup * REPLY_ALLOWANCE_S / 60 > inst.courier_off[self.c]:
            world.stats.declined_for_shift_end += 1
            await self._command({"type": "decline", "offer_id": offer["offer_id"]})
            return
        if start > time.time():  # the offer came during the last drop-off's service: finish it first
            world.stats.late_accepts += 1
            await sleep_until(start)
        await self._command({"type": "accept", "offer_id": offer["offer_id"]})

    async def _job(self, job: dict) -> None:
        world, inst, clock = self.world, self.world.instance, self.world.clock
        received = time.time()
        orders = [await world.instance_order(o["order_id"]) for o in job["orders"]]
        r = int(inst.order_restaurant[orders[0]])
        arrive = await self._drive(float(inst.restaurant_x[r]), float(inst.restaurant_y[r]), received)
        picked_up, _ = await self._command({"type": "at_restaurant", "job_id": job["job_id"]})
        if picked_up:
            ready = clock.wall(max(float(inst.order_ready[o]) for o in orders))
            await self._step_at(max(arrive + clock.seconds(inst.pickup_service / 2), ready))
            picked_up, answered = await self._command({"type": "picked_up", "job_id": job["job_id"]})
        if not picked_up:  # the server took the job back (it lost the courier's heartbeat): free again
            world.stats.jobs_taken_back += 1
            return
        leave = answered + clock.seconds(inst.pickup_service / 2)
        for i, (view, o) in enumerate(zip(job["orders"], orders)):
            await sleep_until(leave)
            arrive = await self._drive(float(inst.order_x[o]), float(inst.order_y[o]), leave)
            await self._step_at(arrive + clock.seconds(inst.dropoff_service / 2))
            last = i == len(orders) - 1
            self.gps_paused = last  # no fix between the last drop-off and signing off for its service
            delivered, answered = await self._command({"type": "delivered", "order_id": view["order_id"]})
            if delivered:
                world.stats.delivered.add(o)
            leave = answered + clock.seconds(inst.dropoff_service / 2)
            if last:
                await self._sign_off()  # busy at the door for the rest of the service
        self.busy_until = leave
        await sleep_until(leave)
        if self.offline and time.time() < clock.wall(float(inst.courier_off[self.c])):
            self.offline = self.gps_paused = False
            await self._gps()  # a fix brings the driver back online


def driver_id(instance: Instance, courier: int) -> str:
    return f"mdrp-courier-{instance.courier_ids[courier]}"


class Kitchens:
    """The restaurants and customers: place each order on time, cook it, mark it ready."""

    def __init__(self, world: World, http: httpx.AsyncClient):
        self.world = world
        self.http = http
        self.restaurants: dict[int, tuple[int, int, ApiClient]] = {}  # instance index -> (id, item, owner)
        self.exact_from: dict[int, float] = {}  # order -> instance minute from which the server's estimate is exact

    def _api(self, role: str, sub: str) -> ApiClient:
        return ApiClient(self.world.base_url, self.world.mint(role, sub), client=self.http)

    async def open(self, restaurant: int) -> None:
        """Create one restaurant (with one menu item) on the server. Its usual prep time (what an order's first
        ready estimate and promise rest on, before its kitchen revises it) is the median of its orders' in the
        instance, in whole wall minutes (so at least one: at a speed-up k, k instance minutes)."""
        inst, world = self.world.instance, self.world
        owner = self._api("restaurant", f"mdrp-restaurant-{inst.restaurant_ids[restaurant]}")
        lat, lng = world.projection.latlng(float(inst.restaurant_x[restaurant]), float(inst.restaurant_y[restaurant]))
        mine = inst.order_restaurant == restaurant
        prep = float(np.median(inst.order_ready[mine] - inst.order_placed[mine])) if mine.any() else 0.0
        created = await owner.create_restaurant(
            name=f"MDRP restaurant {inst.restaurant_ids[restaurant]}", address=f"{inst.name}",
            latitude=lat, longitude=lng, prep_minutes=int(np.clip(round(prep / world.clock.speedup), 1, 240)),
            delivery_radius_m=50_000,
        )
        item = await owner.add_item(created["id"], "Meal", 1500)
        self.restaurants[restaurant] = (created["id"], item["id"], owner)

    async def order(self, o: int) -> None:
        """Place order ``o`` at its placement time, then work it in the kitchen until it is ready."""
        world, inst, clock = self.world, self.world.instance, self.world.clock
        restaurant_id, item_id, owner = self.restaurants[int(inst.order_restaurant[o])]
        customer = self._api("customer", f"mdrp-customer-{inst.order_ids[o]}")
        dropoff = world.projection.latlng(float(inst.order_x[o]), float(inst.order_y[o]))
        await sleep_until(clock.wall(float(inst.order_placed[o])))
        try:
            placed = await _retried(lambda: customer.place_order(  # the same key: placed once, whatever the retries
                restaurant_id, [{"item_id": item_id, "quantity": 1}], dropoff,
                idempotency_key=f"mdrp-{inst.name}-{inst.order_ids[o]}"))
        except (ApiError, httpx.HTTPError) as exc:
            world.stats.placement_errors.append(f"{inst.order_ids[o]}: {exc}")
            return
        world.register(o, placed["id"])
        await self._cook(o, placed["id"], owner)

    async def _cook(self, o: int, order_id: int, owner: ApiClient) -> None:
        """Accept, prepare, and tell the server when the food will be ready, as exactly as whole
        seconds (``ready_in_seconds``) allow: at once rounded down, and exactly from the moment the
        wait is a whole number of wall seconds; then mark it ready at the MDRP ready time."""
        world, clock = self.world, self.world.clock
        ready = clock.wall(float(world.instance.order_ready[o]))
        for action in ("accept", "start-preparing"):
            await self._step(o, lambda a=action: owner.kitchen(order_id, a))
        whole = min(MAX_READY_IN_S, max(0, int(ready - time.time())))
        await self._step(o, lambda: owner.revise_ready(order_id, seconds=whole))
        exact_from = ready - whole
        self.exact_from[o] = clock.minutes(max(exact_from, time.time()))
        if whole and exact_from > time.time():
            await sleep_until(exact_from)
            await self._step(o, lambda: owner.revise_ready(order_id, seconds=whole))
        await sleep_until(ready)
        await self._step(o, lambda: owner.kitchen(order_id, "ready"))

    async def _step(self, o: int, call) -> None:
        try:
            await _retried(call)
        except ApiError as exc:
            if exc.code != "illegal_transition":  # the courier picked it up first: it was ready
                self.world.stats.kitchen_errors.append(f"{self.world.instance.order_ids[o]}: {exc}")
        except httpx.HTTPError as exc:
            self.world.stats.kitchen_errors.append(f"{self.world.instance.order_ids[o]}: {exc!r}")


async def _retried(call, attempts: int = 3):
    """``await call()``, retried over transport errors (for idempotent calls)."""
    for attempt in range(attempts):
        try:
            return await call()
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)


# From the audit trail back to an MDRP solution --------------------------------------------


@dataclass(frozen=True)
class LiveJob:
    """One job as the server recorded it, in instance minutes; orders in drop-off order."""

    courier: int
    orders: tuple[int, ...]
    assignment_time: float
    pickup_time: float
    recorded_dropoff: tuple[float, ...]


def _at(event: dict) -> float:
    return float(event["at"])  # the HTTP audit trail gives unix seconds


def jobs_from_audit(instance: Instance, clock: Clock, events: dict[int, list[dict]]) -> tuple[list[LiveJob], dict]:
    """Jobs of delivered orders from each order's audit trail (``events[order index]``), and
    per-order counts: how often each order was assigned, unassigned and delivered."""
    courier_of = {driver_id(instance, c): c for c in range(instance.n_couriers)}
    jobs: dict[str, dict] = {}
    counts = {"assign": Counter(), "unassign": Counter(), "deliver": Counter()}
    for o, trail in events.items():
        assign = pickup = deliver = None
        for event in trail:
            kind = event["event"]
            if kind in counts:
                counts[kind][o] += 1
            if kind == "assign":
                assign = event
            elif kind == "pick_up":
                pickup = event
            elif kind == "deliver":
                deliver = event
        if assign is None or pickup is None or deliver is None:
            continue
        job = jobs.setdefault(assign["payload"]["job_id"], {
            "courier": courier_of[assign["payload"]["driver_id"]], "assigned": _at(assign), "pickups": [], "drops": []})
        job["pickups"].append(_at(pickup))
        job["drops"].append((_at(deliver), o))
    live = []
    for job in jobs.values():
        drops = sorted(job["drops"])
        live.append(LiveJob(
            courier=job["courier"], orders=tuple(o for _, o in drops),
            assignment_time=clock.minutes(job["assigned"]), pickup_time=clock.minutes(min(job["pickups"])),
            recorded_dropoff=tuple(clock.minutes(t) for t, _ in drops),
        ))
    live.sort(key=lambda j: (j.courier, j.assignment_time))
    return live, {kind: dict(counter) for kind, counter in counts.items()}


def live_solution(instance: Instance, jobs: list[LiveJob], policy: str = "live") -> tuple[Solution, np.ndarray]:
    """The MDRP solution of the live jobs: assignment and pickup as recorded, drop-offs chained
    from the pickup by the MDRP rules; also the recorded minus the chained drop-off per order (lag)."""
    n = instance.n_orders
    solution = Solution(instance=instance, policy=policy, pickup_time=np.full(n, np.nan),
                        dropoff_time=np.full(n, np.nan), order_courier=np.full(n, -1, np.int64))
    lag = np.full(n, np.nan)
    half_pickup, half_dropoff = instance.pickup_service / 2, instance.dropoff_service / 2
    label = {c: ON_LOCATION for c in range(instance.n_couriers)}
    for job in jobs:  # sorted by courier, then time: moves stay in execution order per courier
        c = job.courier
        restaurant = instance.restaurant_ids[int(instance.order_restaurant[job.orders[0]])]
        solution.assignments.append(AssignmentRecord(job.assignment_time, job.pickup_time, c, job.orders))
        solution.moves.append(CourierMove(c, job.assignment_time, label[c], restaurant))
        leave, origin = job.pickup_time + half_pickup, restaurant
        for o, recorded in zip(job.orders, job.recorded_dropoff):
            solution.moves.append(CourierMove(c, leave, origin, instance.order_ids[o]))
            x, y = label_position(instance, c, origin)
            dropoff = leave + float(instance.travel(x, y, instance.order_x[o], instance.order_y[o])) + half_dropoff
            solution.pickup_time[o], solution.dropoff_time[o], solution.order_courier[o] = job.pickup_time, dropoff, c
            lag[o] = recorded - dropoff
            leave, origin = dropoff + half_dropoff, instance.order_ids[o]
        label[c] = origin
    return solution, lag

