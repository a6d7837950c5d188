"""What the bench reads from the servers while the load runs, sampled by one background thread.

* counters of the target: hexdispatch's ``GET /v1/admin/stats`` (summed over
  its front doors) or a baseline's ``GET /stats``;
* hexdispatch's cells (``GET /v1/admin/cells``): GPS fixes applied, the lag
  from a front door receiving a fix to its cell applying it, tick times;
* Postgres ``pg_stat_database`` for the server's database (commits and rows
  written);
* CPU and memory of every process that takes part, grouped (front door,
  cell actors, the rest of Ray, Postgres backends, Redis, load generators).

A sample that times out (an overloaded server answers late or not at all)
is recorded as missing rather than stopping the run.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx
import psutil

#: How long one probe request may take before its sample counts as missing.
PROBE_TIMEOUT_S = 5.0


@dataclass
class Sample:
    at: float
    counters: dict | None = None
    cells: list[dict] | None = None
    postgres: dict | None = None
    processes: dict[str, dict] | None = None
    slow: bool = False
    """A reading of cells, Postgres and processes (else of the counters)."""


def hexdispatch_counters(urls: list[str], admin_token: str, workers: int = 1) -> Callable[[httpx.Client], dict]:
    """Reads the front doors' gateway counters and sums them (``doors`` keeps each one).

    Several processes behind one URL answer in turn, each naming itself: each
    URL is asked ``2 * workers`` times (once for one process) and every
    process's latest answer counts.
    """
    headers = {"authorization": f"Bearer {admin_token}"}
    latest: dict[tuple[str, object], dict] = {}

    def read(client: httpx.Client) -> dict:
        for url in urls:
            for _ in range(1 if workers == 1 else 2 * workers):
                answer = client.get(f"{url}/v1/admin/stats", headers=headers).raise_for_status().json()
                latest[(url, answer.get("gateway") or answer.get("pid"))] = answer
        doors = list(latest.values())
        total = {key: sum(d.get(key, 0) for d in doors)
                 for key in ("gps_in", "gps_batches", "status_out", "positions_out", "drivers_connected",
                             "customers_connected")}
        reading = {**total, "gps": total["gps_in"], "doors": doors}
        if len(doors) == 1 and "at" in doors[0]:
            reading["at"] = doors[0]["at"]  # when the server counted: a flooded server answers late
        return reading

    return read


def hexdispatch_stats_file(stats_file: str) -> Callable[[httpx.Client], dict]:
    """Reads a front door's counters from its ``HEXDISPATCH_STATS_FILE`` (``gps``: the fixes it absorbed)."""
    read_file = baseline_counters(stats_file)

    def read(client: httpx.Client) -> dict:
        counters = read_file(client)
        return {**counters, "gps": counters["gps_in"]}

    return read


def baseline_counters(stats_file: str) -> Callable[[httpx.Client], dict]:
    """Reads a baseline server's counters from the file it keeps (``gps``: the fixes it absorbed; ``at``: when)."""

    def read(client: httpx.Client) -> dict:
        with open(stats_file, "rb") as fh:
            return json.loads(fh.read())

    return read


def hexdispatch_cells(url: str, admin_token: str) -> Callable[[httpx.Client], list[dict]]:
    headers = {"authorization": f"Bearer {admin_token}"}
    return lambda client: client.get(f"{url}/v1/admin/cells", headers=headers).raise_for_status().json()["cells"]


class PostgresProbe:
    """``pg_stat_database`` of one database, read over its own connection."""

    SQL = ("SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted"
           " FROM pg_stat_database WHERE datname = current_database()")

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.loop = asyncio.new_event_loop()
        self.conn = None

    def read(self) -> dict:
        return self.loop.run_until_complete(self._read())

    async def _read(self) -> dict:
        import asyncpg

        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(self.dsn, timeout=PROBE_TIMEOUT_S)
        try:
            # Statistics are per transaction snapshot: start afresh each time.
            await self.conn.execute("SELECT pg_stat_clear_snapshot()")
            return dict(await self.conn.fetchrow(self.SQL))
        except Exception:
            self.conn.terminate()  # a restarted server, say: the next reading connects afresh
            self.conn = None
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def classify(process: psutil.Process, root: int, root_group: str) -> str:
    """The group of a descendant of the process ``root`` of ``root_group``.

    A front door's descendants are its worker processes (``serve --workers``)
    and its local Ray.
    """
    try:
        name = process.name()
        worker = process.ppid() == root and "spawn_main" in " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return root_group
    if name.startswith("ray::CellActor"):
        return "ray: cell actors"
    if root_group.startswith("front door"):
        return root_group if worker else "ray: system"
    return root_group


def _depth(pid: int) -> int:
    try:
        return len(psutil.Process(pid).parents())
    except psutil.NoSuchProcess:
        return 0


class ProcessProbe:
    """CPU (% of one core) and resident memory of process groups.

    ``roots`` names processes directly (pid -> group); descendants of a root
    that are not named themselves are classified by :func:`classify`.
    ``cell_actors``: also count every ``ray::CellActor`` on the machine (front
    doors joined to a Ray they did not start); ``postgres_db``: the backends
    serving that database; ``redis``: the redis-server processes.
    """

    def __init__(self, roots: dict[int, str], postgres_db: str | None = None, redis: bool = False,
                 cell_actors: bool = False):
        self.roots = dict(roots)
        self.cell_actors = cell_actors
        self.postgres_db = postgres_db
        self.redis = redis
        self.known: dict[int, psutil.Process] = {}

    def add(self, pid: int, group: str) -> None:
        self.roots[pid] = group

    def _members(self) -> dict[int, str]:
        members: dict[int, str] = dict(self.roots)
        # Deeper roots first (a front door started by the bench is the bench's child): the nearest root wins.
        for pid, group in sorted(self.roots.items(), key=lambda item: -_depth(item[0])):
            try:
                for child in psutil.Process(pid).children(recursive=True):
                    members.setdefault(child.pid, classify(child, pid, group))
            except psutil.NoSuchProcess:
                members.pop(pid, None)
        if self.postgres_db or self.redis or self.cell_actors:
            for process in psutil.process_iter(["name", "cmdline"]):
                cmdline = " ".join(process.info["cmdline"] or [])
                if self.cell_actors and (process.info["name"] or "").startswith("ray::CellActor"):
                    members.setdefault(process.pid, "ray: cell actors")
                elif self.postgres_db and cmdline.startswith("postgres:") and f" {self.postgres_db} " in cmdline:
                    members[process.pid] = "postgres backends"
                elif self.redis and (process.info["name"] or "").startswith("redis-server"):
                    members[process.pid] = "redis"
        return members

    def cpu_seconds(self) -> dict[tuple[int, float], tuple[str, float]]:
        """Every member's CPU time so far (user + system seconds) with its group, keyed by (pid, creation
        time) so that a reused pid is not taken for the same process."""
        times: dict[tuple[int, float], tuple[str, float]] = {}
        for pid, group in self._members().items():
            try:
                process = psutil.Process(pid)
                with process.oneshot():
                    cpu = process.cpu_times()
                    times[(pid, process.create_time())] = (group, cpu.user + cpu.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return times

    def read(self) -> dict[str, dict]:
        groups: dict[str, dict] = {}
        members = self._members()
        for pid in [p for p in self.known if p not in members]:
            del self.known[pid]
        for pid, group in members.items():
            process = self.known.get(pid)
            try:
                if process is None:
                    process = self.known[pid] = psutil.Process(pid)
                    process.cpu_percent(None)  # the first reading only starts the clock
                    cpu = 0.0
                else:
                    cpu = process.cpu_percent(None)
                rss = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                self.known.pop(pid, None)
                continue
            entry = groups.setdefault(group, {"processes": 0, "cpu_percent": 0.0, "rss_mb": 0.0})
            entry["processes"] += 1
            entry["cpu_percent"] += cpu
            entry["rss_mb"] += rss / 2**20
        return groups


class CpuClock:
    """The cores each group of a :class:`ProcessProbe` uses over a window, from the processes' cumulative CPU
    times read when the clock starts and when :meth:`cores` is asked.

    Sampled percentages need several readings inside the window; a window of a few seconds on a loaded
    machine may get one or none (a slow probe, a late sampler thread), and then a group seems absent.
    Two readings of cumulative times measure the whole window whenever they are taken.
    """

    def __init__(self, probe: ProcessProbe):
        self.probe = probe
        self.started = time.monotonic()
        self.start_times = probe.cpu_seconds()

    def cores(self) -> dict[str, float]:
        """Per group: CPU seconds spent since the start per second (a process not there at the start counts
        whole: it was born since)."""
        times = self.probe.cpu_seconds()
        elapsed = max(time.monotonic() - self.started, 1e-9)
        spent: dict[str, float] = {}
        for key, (group, seconds) in times.items():
            if key in self.start_times:
                seconds -= self.start_times[key][1]
            spent[group] = spent.get(group, 0.0) + seconds
        return {group: seconds / elapsed for group, seconds in sorted(spent.items())}


@dataclass
class Sampler:
    """Samples counters every ``every_s``; cells, Postgres and processes every ``slow_every_s`` (by default
    twice ``every_s``, at most 2 s)."""

    counters: Callable[[httpx.Client], dict]
    cells: Callable[[httpx.Client], list[dict]] | None = None
    postgres: PostgresProbe | None = None
    processes: ProcessProbe | None = None
    every_s: float = 1.0
    slow_every_s: float | None = None
    samples: list[Sample] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.slow_every_s is None:
            self.slow_every_s = min(2.0, 2 * self.every_s)
        self._stop = threading.Event()
        # Two threads: a probe of a flooded server that times out must not delay the counters.
        self._threads = [threading.Thread(target=self._run_counters, name="bench-sampler", daemon=True),
                         threading.Thread(target=self._run_slow, name="bench-sampler-slow", daemon=True)]
        self._lock = threading.Lock()

    def start(self) -> "Sampler":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=3 * PROBE_TIMEOUT_S)
        if self.postgres is not None:
            self.postgres.close()
        with self._lock:
            self.samples.sort(key=lambda sample: sample.at)
            return self.samples

    def _try(self, what: str, read):
        try:
            return read()
        except Exception:  # an overloaded server: a missing sample, not a failed run
            with self._lock:
                self.errors[what] = self.errors.get(what, 0) + 1
            return None

    def _add(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    def _every(self, period_s: float, take) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            take()
            self._stop.wait(max(0.0, period_s - (time.monotonic() - started)))

    def _run_counters(self) -> None:
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
            def take() -> None:
                sample = Sample(at=time.time(), counters=self._try("counters", lambda: self.counters(client)))
                if sample.counters and "at" in sample.counters:
                    sample.at = sample.counters["at"]  # the server's own reading time
                self._add(sample)

            self._every(self.every_s, take)

    def _run_slow(self) -> None:
        if self.cells is None and self.postgres is None and self.processes is None:
            return
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
            def take() -> None:
                sample = Sample(at=time.time(), slow=True)
                if self.cells is not None:
                    sample.cells = self._try("cells", lambda: self.cells(client))
                if self.postgres is not None:
                    sample.postgres = self._try("postgres", self.postgres.read)
                if self.processes is not None:
                    sample.processes = self._try("processes", self.processes.read)
                self._add(sample)

            self._every(self.slow_every_s, take)


def window(samples: list[Sample], start: float, end: float) -> list[Sample]:
    """The samples taken between ``start`` and ``end`` (unix s)."""
    return sorted((s for s in samples if start <= s.at <= end), key=lambda s: s.at)


def rate(samples: list[Sample], key: Callable[[Sample], float | None]) -> float | None:
    """Per-second growth of ``key`` between the first and last samples that have it."""
    points = [(s.at, key(s)) for s in samples]
    points = sorted((at, value) for at, value in points if value is not None)
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def counter(name: str) -> Callable[[Sample], float | None]:
    return lambda s: s.counters.get(name) if s.counters else None


def cells_rate(samples: list[Sample], name: str) -> float | None:
    """Per-second growth of every cell's counter ``name``, summed (a cell missing from a reading is skipped)."""
    readings = sorted((s for s in samples if s.cells), key=lambda s: s.at)
    if len(readings) < 2 or readings[-1].at <= readings[0].at:
        return None
    first = {c["cell"]: c.get(name, 0) for c in readings[0].cells}
    last = {c["cell"]: c.get(name, 0) for c in readings[-1].cells}
    grown = sum(last[cell] - first[cell] for cell in last if cell in first and last[cell] >= first[cell])
    return grown / (readings[-1].at - readings[0].at)


def postgres_total(*names: str) -> Callable[[Sample], float | None]:
    return lambda s: sum(s.postgres[n] for n in names) if s.postgres else None


def process_usage(samples: list[Sample]) -> dict[str, dict]:
    """Per group: mean and peak CPU (% of one core), peak resident memory, process count."""
    groups: dict[str, dict] = {}
    readings = [s.processes for s in samples if s.processes]
    for reading in readings[1:]:  # the first reading of a process has no CPU figure yet
        for group, entry in reading.items():
            acc = groups.setdefault(group, {"cpu": [], "rss": [], "processes": 0})
            acc["cpu"].append(entry["cpu_percent"])
            acc["rss"].append(entry["rss_mb"])
            acc["processes"] = max(acc["processes"], entry["processes"])
    return {group: {"processes": acc["processes"], "cpu_percent_mean": round(sum(acc["cpu"]) / len(acc["cpu"]), 1),
                    "cpu_percent_max": round(max(acc["cpu"]), 1), "rss_mb_max": round(max(acc["rss"]), 1)}
            for group, acc in sorted(groups.items())}
