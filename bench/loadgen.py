"""The load generator of ``hexdispatch bench peak``: driver and customer sockets spread over processes.

One job per spawned process, of two kinds, both built from the clients the
tests and ``hexdispatch simulate`` use:

* :class:`FloodJob`: driver sockets sending GPS at a set rate each, on their
  own clock (or as fast as the server takes, TCP back-pressure); the same
  job runs against the bare ceiling, the Redis design and hexdispatch, so
  their ratios are fair.
* :class:`CityJob`: a share of the simulated city (``clients.city``):
  drivers that move, take offers and deliver; customers that order at the
  job's share of the rate and follow their orders; the kitchens cooking
  them. Its :class:`Step` schedule changes the GPS interval and the order
  rate over time (the stress ramp).

The processes and the bench talk through one queue (``ready``, ``progress``
every second, then ``result`` or ``error``) and two events: ``go`` starts
every process's load at once, after all have connected; ``stop`` ends it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import random
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from tqdm import tqdm

from clients.city import (
    CLOSE_TIMEOUT_S, Kitchen, OrderDesk, RoundRobin, SimDriver, Tally, minter, place_orders, start_drivers, within,
)
from clients.customer import CustomerClient
from clients.driver import DriverClient
from runtime.gc_watch import freeze_survivors

#: Flooding senders yield to the other sockets of their process after this many frames.
FRAMES_PER_YIELD = 32


@dataclass
class FloodJob:
    """``sockets`` driver sockets to ``urls`` (round-robin), each sending GPS from ``go`` until ``stop``:
    ``rate_per_socket`` fixes a second, or as fast as the server reads them when it is None."""

    index: int
    urls: list[str]
    secret: str
    sockets: int
    first_driver: int = 0
    id_prefix: str = "flood"
    followers: int = 0
    """Of the sockets, how many carry an order (``job`` frame) that a customer socket follows (Redis design)."""
    center: tuple[float, float] = (41.8781, -87.6298)
    seed: int = 1
    progress_every_s: float = 1.0
    rate_per_socket: float | None = None


@dataclass
class Step:
    """From ``at_s`` after ``go``: drivers report every ``gps_interval_s``, orders arrive at ``orders_per_minute``."""

    at_s: float
    gps_interval_s: float
    orders_per_minute: float


@dataclass
class CityJob:
    """A share of the simulated city: these drivers, this share of the orders, the steps of the run."""

    index: int
    urls: list[str]
    secret: str
    kitchens: list[Kitchen]
    drivers: list[tuple[str, float, float]]
    """(driver id, lat, lng) of each driver of this process."""
    steps: list[Step]
    duration_s: float
    center: tuple[float, float]
    radius_m: float
    speed_mps: float
    accept_rate: float
    seed: int = 1
    progress_every_s: float = 1.0


@dataclass
class Outcome:
    """What one load process reports at the end."""

    index: int
    gps_sent: int
    connected: int
    tally: Tally = field(default_factory=Tally)
    failures: list[str] = field(default_factory=list)


def raise_fd_limit() -> int:
    """Allow this process as many open files as the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _event_loop_runner():
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def worker(job, events, go, stop) -> None:
    """A load process: run ``job``, report through ``events``, follow ``go`` and ``stop``."""
    raise_fd_limit()
    try:
        run = _flood if isinstance(job, FloodJob) else _city
        outcome = _event_loop_runner()(_freezing_survivors(run(job, events, go, stop)))
        events.put(("result", job.index, outcome))
    except BaseException:
        events.put(("error", job.index, traceback.format_exc()))


async def _freezing_survivors(work: Awaitable):
    """``work``, with the collector kept off the long-lived sockets as in the server
    (:func:`runtime.gc_watch.freeze_survivors`): a full collection over 3,000+
    sockets stalls the process for seconds, and every driver's fix with it."""
    freezer = asyncio.get_running_loop().create_task(freeze_survivors())
    try:
        return await work
    finally:
        freezer.cancel()


async def _wait_event(event, poll_s: float = 0.05) -> None:
    while not event.is_set():
        await asyncio.sleep(poll_s)


async def _report(events, index: int, stop, snapshot: Callable[[], dict], every_s: float) -> None:
    while not stop.is_set():
        events.put(("progress", index, {**snapshot(), "at": time.time()}))
        await asyncio.sleep(every_s)


async def _connect_all(clients: list, chunk: int = 50) -> None:
    for first in range(0, len(clients), chunk):
        await asyncio.gather(*(c.__aenter__() for c in clients[first:first + chunk]))


async def _flood(job: FloodJob, events, go, stop) -> Outcome:
    urls = RoundRobin(job.urls)
    mint = minter(job.secret)
    rng = random.Random(job.seed * 1000 + job.index)
    ids = [f"{job.id_prefix}-{job.first_driver + i}" for i in range(job.sockets)]
    drivers = [DriverClient(urls.next(), mint("driver", driver_id)) for driver_id in ids]
    await _connect_all(drivers)
    positions = [(job.center[0] + rng.uniform(-0.02, 0.02), job.center[1] + rng.uniform(-0.02, 0.02)) for _ in drivers]
    for driver, position in zip(drivers, positions):
        await driver.gps(*position, speed=8.0)  # a first fix, so the server knows every driver before the clock runs
    followers = [CustomerClient(urls.next(), mint("customer", f"follower-{driver_id}"))
                 for driver_id in ids[:job.followers]]
    await _connect_all(followers)
    for number, (driver, follower) in enumerate(zip(drivers, followers)):
        order_id = job.first_driver + number + 1
        await driver.link.send({"type": "job", "order_id": order_id})
        await follower.follow(order_id)
    events.put(("ready", job.index, {"sockets": len(drivers) + len(followers)}))
    await _wait_event(go)
    sent = [0]

    async def send_fixes(driver: DriverClient, lat: float, lng: float) -> None:
        while not stop.is_set():
            await driver.gps(lat, lng, speed=8.0)
            sent[0] += 1
            if driver.seq % FRAMES_PER_YIELD == 0:
                await asyncio.sleep(0)

    async def send_paced(driver: DriverClient, lat: float, lng: float, first_at: float, period: float) -> None:
        # An absolute schedule: a send that is late does not push the next ones back, missed ones are skipped.
        due = first_at
        while True:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await driver.gps(lat, lng, speed=8.0)
            sent[0] += 1
            due = max(due + period, loop.time())

    loop = asyncio.get_running_loop()
    if job.rate_per_socket:
        period, start = 1.0 / job.rate_per_socket, loop.time()
        senders = [loop.create_task(send_paced(d, *p, start + rng.uniform(0, period), period))
                   for d, p in zip(drivers, positions)]
    else:
        senders = [loop.create_task(send_fixes(d, *p)) for d, p in zip(drivers, positions)]
    await _report(events, job.index, stop, lambda: {"gps_sent": sent[0]}, job.progress_every_s)
    for task in senders:
        task.cancel()
    await asyncio.gather(*senders, return_exceptions=True)
    tally = Tally()
    for follower in followers:
        for positions in follower.positions.values():
            tally.positions_received(positions)
    # Frames still queued in the server would hold up closing handshakes: drop the connections.
    failures: list[str] = []
    await within(asyncio.gather(*(client.close(graceful=False) for client in [*drivers, *followers])),
                 CLOSE_TIMEOUT_S, failures, "dropping the flood's sockets")
    return Outcome(job.index, sent[0], len(drivers), tally, failures)


async def _city(job: CityJob, events, go, stop) -> Outcome:
    urls = RoundRobin(job.urls)
    mint = minter(job.secret)
    rng = random.Random(job.seed * 1000 + job.index)
    tally = Tally()
    first = job.steps[0]
    drivers = [SimDriver(urls.next(), mint("driver", driver_id), driver_id, (lat, lng), rng, tally, job.speed_mps,
                         first.gps_interval_s, job.accept_rate) for driver_id, lat, lng in job.drivers]
    connected = [0]

    async def connecting_report() -> None:
        while connected[0] < len(drivers):
            events.put(("connecting", job.index, {"connected": connected[0]}))
            await asyncio.sleep(1.0)

    reporter = asyncio.get_running_loop().create_task(connecting_report())
    await start_drivers(drivers, on_started=lambda n: connected.__setitem__(0, connected[0] + n))
    reporter.cancel()
    desk = OrderDesk(urls, mint, job.kitchens, rng, job.center, job.radius_m, tally)
    events.put(("ready", job.index, {"sockets": len(drivers)}))
    await _wait_event(go)
    started = time.time()
    placing = [True]

    def snapshot() -> dict:
        return {"gps_sent": sum(d.client.seq for d in drivers), "placed": len(tally.placed_at),
                "open": desk.open_orders(), "placing": placing[0], "refused": tally.refused_placements,
                "unoffered": sum(1 for order_id in tally.placed_at if order_id not in tally.first_offer)}

    progress = asyncio.get_running_loop().create_task(_report(events, job.index, stop, snapshot,
                                                              job.progress_every_s))

    async def follow_steps() -> None:
        ends = [s.at_s for s in job.steps[1:]] + [job.duration_s]
        try:
            for step, end in zip(job.steps, ends):
                await asyncio.sleep(max(0.0, started + step.at_s - time.time()))
                for driver in drivers:
                    driver.gps_interval_s = step.gps_interval_s
                await place_orders(desk, step.orders_per_minute, max(0.0, started + end - time.time()), rng)
        finally:
            placing[0] = False

    # The bench may stop the steps early (a stress ramp past its break): then they end at once.
    steps = asyncio.get_running_loop().create_task(follow_steps())
    await _wait_event(stop, poll_s=0.2)
    steps.cancel()
    progress.cancel()
    # The load is over; an overloaded server would hold every closing handshake up: drop the sockets.
    await within(desk.close(graceful=False), 4 * CLOSE_TIMEOUT_S, desk.failures, "closing the order desk")
    await within(asyncio.gather(*(driver.stop(graceful=False) for driver in drivers)), CLOSE_TIMEOUT_S,
                 desk.failures, "dropping the drivers' sockets")
    return Outcome(job.index, sum(d.client.seq for d in drivers), len(drivers), tally, desk.failures)


class LoadRun:
    """The load processes of one phase: start, connect, go, watch, stop, collect."""

    def __init__(self, jobs: list, name: str):
        self.jobs = jobs
        self.name = name
        context = multiprocessing.get_context("spawn")
        self.events = context.Queue()
        self.go = context.Event()
        self.stop = context.Event()
        self.processes = [context.Process(target=worker, args=(job, self.events, self.go, self.stop), daemon=True)
                          for job in jobs]
        self.progress: dict[int, dict] = {}
        self.history: list[tuple[int, dict]] = []
        """Every progress report, in arrival order: (process index, report)."""
        self.outcomes: dict[int, Outcome] = {}
        self.go_at: float | None = None

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def start(self, expected_sockets: int, timeout_s: float = 600.0,
              before_go: Callable[[], None] | None = None) -> None:
        """Start the processes and wait until every one has connected its sockets (and ``before_go()``, when
        given, has returned: the sockets are live meanwhile); then go."""
        for process in self.processes:
            process.start()
        ready: dict[int, int] = {}
        connecting: dict[int, int] = {}
        deadline = time.monotonic() + timeout_s
        with progress_bar(total=expected_sockets, desc=f"{self.name}: connecting", unit="sock") as bar:
            while len(ready) < len(self.processes):
                kind, index, payload = self._next_event(deadline)
                if kind == "ready":
                    ready[index] = payload["sockets"]
                elif kind == "connecting":
                    connecting[index] = payload["connected"]
                bar.update(sum(ready.values()) + sum(v for k, v in connecting.items() if k not in ready) - bar.n)
        if before_go is not None:
            before_go()
        self.go_at = time.time()
        self.go.set()

    def watch(self, seconds: float | None, until: Callable[[dict[int, dict]], bool] | None = None,
              every: Callable[[], None] | None = None, postfix: Callable[[dict[int, dict]], str] | None = None) -> None:
        """Let the load run ``seconds`` (or until ``until(progress)`` holds); ``every()`` runs about each second."""
        started = time.monotonic()
        total = round(seconds, 1) if seconds else None
        next_tick = started
        with progress_bar(total=total, desc=self.name, unit="s", bar_format="{l_bar}{bar}| {n:.0f}/{total} s {postfix}"
                          if total else "{desc}: {n:.0f} s {postfix}") as bar:
            while True:
                elapsed = time.monotonic() - started
                if seconds is not None and elapsed >= seconds:
                    break
                if until is not None and self.progress and until(self.progress):
                    break
                try:
                    kind, index, payload = self.events.get(timeout=0.2)
                    self._handle(kind, index, payload)
                except queue.Empty:
                    self._check_alive()
                if every is not None and time.monotonic() >= next_tick:
                    next_tick += 1.0
                    every()
                if postfix is not None and self.progress:
                    bar.set_postfix_str(postfix(self.progress), refresh=False)
                bar.update((min(total, elapsed) if total else elapsed) - bar.n)

    def finish(self, timeout_s: float = 300.0) -> list[Outcome]:
        """Stop the load and collect every process's outcome."""
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) < len(self.processes):
            kind, index, payload = self._next_event(deadline)
            self._handle(kind, index, payload)
        for process in self.processes:
            process.join(timeout=30)
        return [self.outcomes[i] for i in sorted(self.outcomes)]

    def abort(self) -> None:
        """Stop every load process now (after a failure elsewhere)."""
        self.stop.set()
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(timeout=10)

    def _next_event(self, deadline: float):
        while True:
            try:
                kind, index, payload = self.events.get(timeout=0.5)
            except queue.Empty:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: the load processes did not answer in time") from None
                continue
            if kind == "error":
                self.abort()
                raise RuntimeError(f"{self.name}: load process {index} failed:\n{payload}")
            return kind, index, payload

    def _handle(self, kind: str, index: int, payload) -> None:
        if kind == "progress":
            self.progress[index] = payload
            self.history.append((index, payload))
        elif kind == "result":
            self.outcomes[index] = payload
        elif kind == "error":
            self.abort()
            raise RuntimeError(f"{self.name}: load process {index} failed:\n{payload}")

    def _check_alive(self) -> None:
        dead = [p for i, p in enumerate(self.processes) if not p.is_alive() and i not in self.outcomes]
        if dead and self.events.empty():
            self.abort()
            raise RuntimeError(f"{self.name}: a load process exited without a result (exit code {dead[0].exitcode})")


def progress_bar(**options) -> tqdm:
    """A tqdm bar that redraws often on a terminal and rarely into a log file."""
    return tqdm(mininterval=0.5 if sys.stderr.isatty() else 15.0, **options)


def split(count: int, parts: int) -> list[tuple[int, int]]:
    """(first, size) of ``parts`` near-equal shares of ``range(count)``."""
    shares, first = [], 0
    for part in range(parts):
        size = count // parts + (1 if part < count % parts else 0)
        shares.append((first, size))
        first += size
    return shares
