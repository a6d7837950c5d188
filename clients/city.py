"""A simulated city against a running hexdispatch: kitchens, drivers, customers, and the audit.

The pieces ``hexdispatch simulate`` and ``hexdispatch bench peak`` are built
from. Everything a piece observes goes into a :class:`Tally`, a plain
picklable record that load-generator processes send back and merge, so the
audit can run over a whole city spread across processes:

* :func:`seed_city` onboards restaurants (each with its kitchen account);
* :class:`SimDriver` is a driver app in a car: GPS while it moves, offers
  read and mostly accepted, jobs driven, picked up and delivered;
* :class:`OrderDesk` is the customers: each order is placed over HTTP by a
  fresh customer who follows it on a websocket until it is delivered, while
  the restaurant's kitchen accepts, cooks and marks it ready;
* :func:`audit` checks every acknowledged order against ``order_events``.

Several front doors may be given: sockets and HTTP calls go to them
round-robin (:class:`RoundRobin`), so a customer usually follows a driver
connected to another front door.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import httpx
import numpy as np

from clients.customer import CustomerClient
from clients.driver import DriverClient, StepRefused
from clients.http import ApiClient, ApiError
from dispatch.eta import error_summary
from dispatch.geo import EARTH_RADIUS_M, haversine_m
from dispatch.lifecycle import TERMINAL_STATUSES

DEFAULT_CENTER = (41.8781, -87.6298)  # Chicago Loop

Mint = Callable[[str, str], str]
"""``mint(role, sub)`` -> a bearer token for that principal."""


def minter(secret: str, ttl_s: int = 24 * 3600) -> Mint:
    """Mint tokens signed with the server's ``secret`` (as ``hexdispatch token`` does)."""
    from server.auth import mint_token

    def mint(role: str, sub: str) -> str:
        return mint_token(secret, role, sub, now=int(time.time()), ttl_s=ttl_s)

    return mint


def local_minter() -> tuple[Mint, str]:
    """Mint tokens with the server's secret (``HEXDISPATCH_JWT_SECRET`` or ``.hexdispatch/jwt_secret``, never one
    made up here); also return where that secret came from."""
    from server.config import Settings

    secret, source = Settings.from_env().existing_jwt_secret()
    return minter(secret), source


class RoundRobin:
    """The front doors' base URLs, handed out in turn."""

    def __init__(self, urls: list[str]):
        if not urls:
            raise ValueError("at least one server URL is needed")
        self.urls = [url.rstrip("/") for url in urls]
        self._next = itertools.cycle(self.urls)

    def next(self) -> str:
        return next(self._next)


def offset(point: tuple[float, float], metres: float, bearing_deg: float) -> tuple[float, float]:
    """The point ``metres`` away from ``point`` towards ``bearing_deg`` (small-distance approximation)."""
    dlat = metres * math.cos(math.radians(bearing_deg)) / EARTH_RADIUS_M
    dlng = metres * math.sin(math.radians(bearing_deg)) / (EARTH_RADIUS_M * math.cos(math.radians(point[0])))
    return point[0] + math.degrees(dlat), point[1] + math.degrees(dlng)


def random_point(rng: random.Random, center, radius_m: float) -> tuple[float, float]:
    """A point uniformly distributed over the disk of ``radius_m`` around ``center``."""
    return offset(center, radius_m * math.sqrt(rng.random()), rng.uniform(0, 360))


def unix_time(value) -> float:
    """An API timestamp (ISO 8601 string) as unix seconds."""
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else float(value)


def percentiles(values) -> dict:
    """``{"n", "p50", "p95", "p99", "max"}`` of ``values`` (just ``{"n": 0}`` when empty)."""
    array = np.asarray(list(values), dtype=float)
    if not len(array):
        return {"n": 0}
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {"n": len(array), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(array.max())}


@dataclass
class Kitchen:
    """A seeded restaurant: where it is, what it sells, and its owner's account (picklable)."""

    id: int
    lat: float
    lng: float
    item_ids: list[int]
    prep_minutes: int
    owner_token: str
    url: str
    """The front door its kitchen staff talk to."""


@dataclass
class Tally:
    """What one process's drivers and customers saw; tallies of several processes merge."""

    placed_at: dict[int, float] = field(default_factory=dict)
    """Order id -> the server's ``placed_at`` (unix s) of every acknowledged order."""
    ready_estimate: dict[int, float] = field(default_factory=dict)
    """Order id -> the ready estimate at placement (unix s)."""
    placement: list[tuple[float, float]] = field(default_factory=list)
    """(acknowledged at, HTTP latency ms) per placement."""
    first_offer: dict[int, tuple[float, dict]] = field(default_factory=dict)
    """Order id -> (first offer received at, the cell's seconds of waiting by reason: the offer's
    ``waited_s``, see ``dispatch.cell.WAIT_REASONS``)."""
    delivered_by: dict[int, str] = field(default_factory=dict)
    """Order id -> the driver that delivered it."""
    seen_seqs: dict[int, list[int]] = field(default_factory=dict)
    """Order id -> the status sequence numbers its customer received."""
    followed_until: dict[int, float] = field(default_factory=dict)
    """Order id -> when its customer stopped following it (unix s)."""
    gps_to_customer: list[tuple[float, float]] = field(default_factory=list)
    """(received at, ms from the driver's fix to the customer's screen) per driver position."""
    gps_to_front_door: list[tuple[float, float]] = field(default_factory=list)
    """(received at, ms from the driver's fix to the front door reading it) per driver position."""
    refused_placements: int = 0
    declines: int = 0
    double_bookings: int = 0
    """A driver told of a second job while busy, or an order delivered by two drivers."""
    job_failures: list[str] = field(default_factory=list)
    driver_errors: dict[str, int] = field(default_factory=dict)
    ready_after_pickup: int = 0
    """Kitchens' "ready" clicks refused (409) because the driver had already picked the food up (which marks it
    ready): a kitchen late on its own estimate, harmless."""

    def first_offer_at(self, order_id: int, at: float, waited_s: dict) -> None:
        known = self.first_offer.get(order_id)
        if known is None or at < known[0]:
            self.first_offer[order_id] = (at, waited_s)

    def positions_received(self, positions: list[dict]) -> None:
        """Driver positions a customer received: ``fix_t`` is the driver's send time (ms), ``t`` the
        front door's receipt (s), ``received_at`` the customer's (s); all on this machine's clock."""
        for p in positions:
            if p.get("fix_t"):
                self.gps_to_customer.append((p["received_at"], p["received_at"] * 1000 - p["fix_t"]))
                self.gps_to_front_door.append((p["received_at"], p["t"] * 1000 - p["fix_t"]))

    def delivered(self, order_id: int, driver_id: str) -> None:
        if self.delivered_by.setdefault(order_id, driver_id) != driver_id:
            self.double_bookings += 1

    def merge(self, other: "Tally") -> "Tally":
        """Fold ``other`` (another process's tally) into this one."""
        self.placed_at.update(other.placed_at)
        self.ready_estimate.update(other.ready_estimate)
        self.placement += other.placement
        for order_id, offer in other.first_offer.items():
            self.first_offer_at(order_id, *offer)
        for order_id, driver_id in other.delivered_by.items():
            self.delivered(order_id, driver_id)
        self.seen_seqs.update(other.seen_seqs)
        self.followed_until.update(other.followed_until)
        self.gps_to_customer += other.gps_to_customer
        self.gps_to_front_door += other.gps_to_front_door
        self.refused_placements += other.refused_placements
        self.declines += other.declines
        self.double_bookings += other.double_bookings
        self.job_failures += other.job_failures
        self.ready_after_pickup += other.ready_after_pickup
        for code, count in other.driver_errors.items():
            self.driver_errors[code] = self.driver_errors.get(code, 0) + count
        return self

    def placement_to_offer_ms(self) -> list[float]:
        """Placement (the server's clock) to the first offer, per offered order."""
        return [(self.first_offer[o][0] - t) * 1000 for o, t in self.placed_at.items() if o in self.first_offer]


async def seed_city(urls: RoundRobin, mint: Mint, rng: random.Random, center, radius_m: float, n_restaurants: int,
                    prep_minutes: list[int], items_per_menu: int = 5, concurrency: int = 8) -> list[Kitchen]:
    """Onboard ``n_restaurants`` around ``center``, each with a menu; prep times cycle through ``prep_minutes``."""
    places = [(random_point(rng, center, radius_m), rng.choice(["pizza", "thai", "burgers", "sushi"]),
               [rng.randrange(600, 2500) for _ in range(items_per_menu)]) for _ in range(n_restaurants)]
    gate = asyncio.Semaphore(concurrency)

    async def onboard(i: int) -> Kitchen:
        (lat, lng), cuisine, prices = places[i]
        url, token = urls.next(), mint("restaurant", f"sim-kitchen-{uuid.uuid4().hex[:8]}")
        prep = prep_minutes[i % len(prep_minutes)]
        async with gate:
            owner = ApiClient(url, token)
            try:
                rest = await owner.create_restaurant(
                    name=f"Sim Kitchen {i}", address=f"{i} Simulation Ave", latitude=lat, longitude=lng,
                    prep_minutes=prep, cuisine_tags=[cuisine])
                items = [await owner.add_item(rest["id"], f"Dish {j}", price) for j, price in enumerate(prices)]
            finally:
                await owner.aclose()
        return Kitchen(rest["id"], lat, lng, [item["id"] for item in items], prep, token, url)

    return list(await asyncio.gather(*(onboard(i) for i in range(n_restaurants))))


#: The longest a load process waits for one socket or pool to close at the end of a run.
CLOSE_TIMEOUT_S = 15.0
#: How long closing customers wait for the status events the server has for their orders.
CATCH_UP_S = 60.0


async def within(awaitable, seconds: float, failures: list[str], what: str) -> None:
    """Await ``awaitable`` for at most ``seconds``: a hang is noted in ``failures`` and left behind,
    so that a run's figures still come back from an overloaded server."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()  # not waited for: what hangs may not even end when cancelled
        failures.append(f"{what}: no answer in {seconds:g} s")
    elif not task.cancelled() and task.exception() is not None:
        raise task.exception()


class SimDriver:
    """A driver app on a phone in a car: moves at ``speed_mps``, GPS every ``gps_interval_s``."""

    def __init__(self, base_url: str, token: str, driver_id: str, position, rng: random.Random, tally: Tally,
                 speed_mps: float, gps_interval_s: float, accept_rate: float):
        self.client = DriverClient(base_url, token)
        self.id = driver_id
        self.position = position
        self.rng = rng
        self.tally = tally
        self.speed_mps = speed_mps
        self.gps_interval_s = gps_interval_s
        self.accept_rate = accept_rate
        self.busy = False
        self.jobs_taken: set[str] = set()
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.client.__aenter__()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._gps_loop()), loop.create_task(self._work_loop())]

    async def stop(self, graceful: bool = True) -> None:
        """Park the car; ``graceful=False`` drops the socket without the closing handshake."""
        for task in self.tasks:
            task.cancel()
        await self.client.close(graceful)
        for error in self.client.errors:
            self.tally.driver_errors[error["code"]] = self.tally.driver_errors.get(error["code"], 0) + 1

    async def _gps_loop(self) -> None:
        """A fix every ``gps_interval_s`` on the phone's own clock, from a random phase.

        Fixes keep their times even when this process stalls: a late fix does
        not move the next one later (with ``sleep(interval)`` after each send,
        every stall would leave all drivers reporting in lockstep from then on).
        A phone that fell more than a whole interval behind skips the fixes it missed.
        """
        loop = asyncio.get_running_loop()
        due = loop.time() + self.rng.uniform(0, self.gps_interval_s)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.client.gps(*self.position, speed=self.speed_mps)
            due += self.gps_interval_s
            behind = loop.time() - due
            if behind > 0:
                due += math.ceil(behind / self.gps_interval_s) * self.gps_interval_s

    async def _drive_to(self, target) -> None:
        """Move in a straight line at road speed (the GPS loop reports the way), then report the arrival."""
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
                    self.tally.first_offer_at(order["order_id"], now, order.get("waited_s", {}))
                await asyncio.sleep(self.rng.uniform(0.1, 0.8))  # a human reads the offer
                if self.rng.random() < self.accept_rate:
                    await self.client.accept(message["offer_id"])
                else:
                    self.tally.declines += 1
                    await self.client.decline(message["offer_id"])
            elif message["type"] == "assigned":
                if message["job_id"] in self.jobs_taken:
                    continue  # told again after its cell was rebuilt: a job this driver already has
                self.jobs_taken.add(message["job_id"])
                if self.busy:
                    self.tally.double_bookings += 1
                self.busy = True
                try:
                    await self._do_job(message)
                except (asyncio.TimeoutError, KeyError, ValueError, StepRefused) as exc:
                    self.tally.job_failures.append(f"{self.id}: {type(exc).__name__}: {exc}")
                finally:
                    self.busy = False

    async def _do_job(self, job: dict) -> None:
        restaurant = job["orders"][0]["restaurant"]
        await self._drive_to((restaurant["lat"], restaurant["lng"]))
        # Each step until the server recorded it (resent across a front door's, a cell's or Postgres's fault).
        await self.client.confirm("at_restaurant", job_id=job["job_id"])
        ready_at = max(o["ready_at"] for o in job["orders"])
        await asyncio.sleep(max(0.0, ready_at - time.time()))
        await self.client.confirm("picked_up", job_id=job["job_id"])
        for order in job["orders"]:
            await self._drive_to((order["dropoff"]["lat"], order["dropoff"]["lng"]))
            await self.client.confirm("delivered", order_id=order["order_id"])
            self.tally.delivered(order["order_id"], self.id)


async def start_drivers(drivers: list[SimDriver], chunk: int = 50, on_started: Callable[[int], None] | None = None):
    """Connect ``drivers`` ``chunk`` at a time (a phone fleet coming online, not a thundering herd)."""
    for first in range(0, len(drivers), chunk):
        batch = drivers[first:first + chunk]
        await asyncio.gather(*(d.start() for d in batch))
        if on_started is not None:
            on_started(len(batch))


async def kitchen_step(api: ApiClient, order_id: int, action: str, attempts: int = 3) -> bool:
    """One kitchen click, retried over a dropped keep-alive connection; False if the order had already moved past
    it (409: a retry landed twice, or the driver already picked up)."""
    for attempt in range(attempts):
        try:
            await api.kitchen(order_id, action)
            return True
        except ApiError as exc:
            if exc.code == "illegal_transition":
                return False
            raise
        except httpx.TransportError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)


#: How long before its ready estimate a simulated kitchen marks an order ready. Drivers pick up at the estimate
#: (picking up marks the food ready), so a kitchen clicking exactly on time would race them and get 409s.
READY_AHEAD_S = 3.0


async def cook(api: ApiClient, order_id: int, ready_at: float, tally: Tally | None = None) -> None:
    """A restaurant working one order: accept, cook, mark it ready :data:`READY_AHEAD_S` before ``ready_at``
    (unix s, the estimate drivers are given); a "ready" refused because the food was already picked up is
    counted in ``tally.ready_after_pickup``."""
    await kitchen_step(api, order_id, "accept")
    await kitchen_step(api, order_id, "start-preparing")
    await asyncio.sleep(max(0.0, ready_at - READY_AHEAD_S - time.time()))
    if not await kitchen_step(api, order_id, "ready") and tally is not None:
        tally.ready_after_pickup += 1


@dataclass(eq=False)
class OrderDesk:
    """Customers ordering from nearby kitchens and following their orders to the door.

    Each :meth:`place` is one new customer: a websocket to a front door,
    ``POST /v1/orders`` (through the next front door), a subscription, and
    the kitchen's work; the socket closes once the order is delivered or
    cancelled, so there is one customer socket per active order.
    """

    urls: RoundRobin
    mint: Mint
    kitchens: list[Kitchen]
    rng: random.Random
    center: tuple[float, float]
    radius_m: float
    tally: Tally
    owners: dict[int, ApiClient] = field(init=False)
    """Each kitchen's staff, on the front door the kitchen was seeded through."""
    following: dict[int, CustomerClient] = field(default_factory=dict, init=False)
    tokens: dict[int, str] = field(default_factory=dict, init=False)
    """Each followed order's customer token (to ask the server what its customer should have seen)."""
    caught_up: dict[int, float] = field(default_factory=dict, init=False)
    """Order id -> when the server was asked for its events, which its customer then all received."""
    tasks: set[asyncio.Task] = field(default_factory=set, init=False)
    failures: list[str] = field(default_factory=list, init=False)
    pools: dict[str, httpx.AsyncClient] = field(default_factory=dict, init=False)
    """One HTTP connection pool per front door for every customer and kitchen of this desk: a new
    ``httpx.AsyncClient`` builds an SSL context (tens of ms of CPU), which stalled every socket of
    the process once per order."""

    def __post_init__(self):
        self.owners = {k.id: self._api(k.url, k.owner_token) for k in self.kitchens}

    def _api(self, url: str, token: str) -> ApiClient:
        pool = self.pools.get(url)
        if pool is None:
            pool = self.pools[url] = httpx.AsyncClient(base_url=url, timeout=10.0)
        return ApiClient(url, token, client=pool)

    def open_orders(self) -> int:
        """Acknowledged orders not yet delivered or cancelled (as their customers see them)."""
        return len(self.following)

    def place_soon(self) -> None:
        """Start one customer's order in the background."""
        self._spawn(self.place())

    async def place(self) -> None:
        customer_id = f"sim-customer-{uuid.uuid4().hex[:10]}"
        home = random_point(self.rng, self.center, self.radius_m)
        kitchen = min(self.kitchens, key=lambda k: haversine_m(*home, k.lat, k.lng) + self.rng.uniform(0, 800))
        token = self.mint("customer", customer_id)
        follower = CustomerClient(self.urls.next(), token)
        await follower.__aenter__()
        api = self._api(self.urls.next(), token)
        try:
            started = time.perf_counter()
            order = await api.place_order(kitchen.id, [{"item_id": self.rng.choice(kitchen.item_ids), "quantity": 1}],
                                          home)
            self.tally.placement.append((time.time(), (time.perf_counter() - started) * 1000))
        except (ApiError, httpx.HTTPError) as exc:
            self.tally.refused_placements += 1
            self.failures.append(f"placement: {exc!r}")
            await follower.__aexit__(None, None, None)
            return
        finally:
            await api.aclose()
        order_id = order["id"]
        self.tally.placed_at[order_id] = unix_time(order["placed_at"])
        if order.get("ready_estimate_at"):
            self.tally.ready_estimate[order_id] = unix_time(order["ready_estimate_at"])
        self.following[order_id] = follower
        self.tokens[order_id] = token
        await follower.follow(order_id)
        ready_at = self.tally.ready_estimate.get(order_id, time.time() + kitchen.prep_minutes * 60)
        self._spawn(cook(self.owners[kitchen.id], order_id, ready_at, self.tally))
        await follower.wait_for(lambda c: bool(set(c.statuses(order_id)) & set(TERMINAL_STATUSES)),
                                timeout_s=24 * 3600)
        await self._unfollow(order_id)

    async def _unfollow(self, order_id: int, graceful: bool = True) -> None:
        follower = self.following.pop(order_id, None)
        self.tokens.pop(order_id, None)
        if follower is None:
            return
        self.tally.seen_seqs[order_id] = [e["seq"] for e in follower.events[order_id]]
        # A customer shown to have received everything up to a moment answers for the events up to then,
        # not for those that came while the load was closing (see ``catch_up``).
        self.tally.followed_until[order_id] = min(time.time(), self.caught_up.pop(order_id, math.inf) + DELIVERY_GRACE_S)
        for position_list in follower.positions.values():
            self.tally.positions_received(position_list)
        await within(follower.close(graceful), CLOSE_TIMEOUT_S, self.failures, f"closing order {order_id}'s customer")

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guarded(self, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one customer's or kitchen's failure must not stop the city
            self.failures.append(f"{type(exc).__name__}: {exc}")

    async def close(self, graceful: bool = True) -> None:
        """Stop every customer and kitchen; what the open orders' customers saw goes into the tally.

        ``graceful=False`` drops the customers' sockets without the closing
        handshake (an overloaded server would make every handshake wait).
        """
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await within(asyncio.gather(*(self.catch_up(order_id) for order_id in list(self.following))),
                     CATCH_UP_S, self.failures, "the customers catching up")
        await asyncio.gather(*(self._unfollow(order_id, graceful) for order_id in list(self.following)))

    async def catch_up(self, order_id: int) -> None:
        """Ask the server for the order's status events, then wait (up to ``CATCH_UP_S``) until its customer has
        received every one of them; note the moment of asking when it has (``caught_up``).

        A loaded machine may take seconds to carry an event to a customer: leaving at once would count an
        event on its way as lost. One that has not arrived after this wait is lost."""
        follower, token = self.following.get(order_id), self.tokens.get(order_id)
        if follower is None or token is None:
            return
        asked_at = time.time()
        api = self._api(self.urls.next(), token)
        try:
            last = max((event["seq"] for event in await api.events(order_id)), default=0)
        except (ApiError, httpx.HTTPError):
            return
        try:
            await follower.wait_for(lambda c: c.last_seq.get(order_id, 0) >= last, timeout_s=CATCH_UP_S)
        except asyncio.TimeoutError:
            return
        self.caught_up[order_id] = asked_at
        await within(asyncio.gather(*(pool.aclose() for pool in self.pools.values())), CLOSE_TIMEOUT_S,
                     self.failures, "closing the HTTP pools")


async def place_orders(desk: OrderDesk, per_minute: float, duration_s: float, rng: random.Random,
                       tick: Callable[[], None] | None = None) -> None:
    """Poisson arrivals of ``per_minute`` orders for ``duration_s``; ``tick()`` is called after each."""
    if per_minute <= 0:
        await asyncio.sleep(duration_s)
        return
    deadline = time.time() + duration_s
    while True:
        wait = rng.expovariate(per_minute / 60.0)
        if time.time() + wait >= deadline:
            await asyncio.sleep(max(0.0, deadline - time.time()))
            return
        await asyncio.sleep(wait)
        desk.place_soon()
        if tick is not None:
            tick()


#: A status event older than this when its customer stopped following must have reached the customer.
DELIVERY_GRACE_S = 2.0


def assigned_while_held(events: list[dict]) -> list[dict]:
    """An order's ``assign`` events that found it already held by a driver: its double assignments."""
    doubled, holding = [], 0
    for event in events:
        if event["event"] == "assign":
            holding += 1
            if holding > 1:
                doubled.append(event)
        elif event["event"] == "unassign":
            holding -= 1
    return doubled


def promise_outcome(events: list[dict]) -> tuple[float, bool] | None:
    """A delivered order's promise (its first ``estimate`` event) against its ``deliver`` event: (promised minus
    actual drop-off, minutes; whether the drop-off fell inside the promised range), or None."""
    promise = next((e["payload"] for e in events if e["event"] == "estimate"), None)
    deliver = next((e for e in events if e["event"] == "deliver"), None)
    if promise is None or deliver is None:
        return None
    done = unix_time(deliver["at"])
    return (promise["dropoff_at"] - done) / 60.0, promise["dropoff_early"] <= done <= promise["dropoff_late"]


def missed_events(events: list[dict], seen_seqs, until: float) -> list[dict]:
    """An order's status events at or before ``until`` (unix s) whose ``seq`` its customer never received."""
    seen = set(seen_seqs)
    return [e for e in events if unix_time(e["at"]) <= until and e["seq"] not in seen]


async def audit(admin: ApiClient, placed: list[int], seen_seqs: dict[int, list[int]],
                followed_until: dict[int, float] | None = None, concurrency: int = 16) -> dict:
    """Check every acknowledged order against the server's audit trail.

    ``lost`` counts orders missing from the server or still not delivered or
    cancelled, plus status events a customer never received (when
    ``followed_until`` says when a customer left, only events at least
    :data:`DELIVERY_GRACE_S` older than that count); an order assigned while
    it was already held by a driver is a double assignment. ``promise`` scores the delivery promises
    (:func:`promise_outcome`; minutes, and the share of drop-offs inside the promised range).
    """
    followed_until = followed_until or {}
    counts = {"delivered": 0, "cancelled": 0, "in_flight": 0, "missing": 0, "double_assigned": 0,
              "lost_status_events": 0}
    gate = asyncio.Semaphore(concurrency)
    promises: list[tuple[float, bool]] = []

    async def check(order_id: int) -> None:
        async with gate:
            try:
                events = await admin.events(order_id)
            except ApiError:
                counts["missing"] += 1
                return
        final = events[-1]["status"] if events else None
        counts[final if final in TERMINAL_STATUSES else "in_flight"] += 1
        counts["double_assigned"] += len(assigned_while_held(events))
        until = followed_until.get(order_id, float("inf")) - DELIVERY_GRACE_S
        counts["lost_status_events"] += len(missed_events(events, seen_seqs.get(order_id, ()), until))
        if (outcome := promise_outcome(events)) is not None:
            promises.append(outcome)

    await asyncio.gather(*(check(order_id) for order_id in placed))
    counts["lost"] = counts["missing"] + counts["in_flight"] + counts["lost_status_events"]
    errors = np.array([error for error, _ in promises])
    counts["promise"] = {**error_summary(errors, np.zeros(len(errors))),
                         "inside_range": float(np.mean([inside for _, inside in promises])) if promises else math.nan}
    return counts
