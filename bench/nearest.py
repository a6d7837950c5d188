"""Nearest available drivers: inside the cell actors versus Redis GEOSEARCH (``hexdispatch bench nearest``).

The question: with 200,000 drivers in one metro, how fast is "the 10 nearest
available drivers within 2 miles" answered from inside a cell actor, compared
with Redis GEOSEARCH on the same points and the same queries? Target: the
in-actor time is at most 0.1x the Redis time, at p50 and at p99.

* Drivers: ``--drivers`` points over a Chicago metro (the density model of
  ``bench.catalog_metro``: a dense Loop, a dozen neighbourhood centres, a thin
  spread over the land, the lake cut out; shrunk to ``--half-side-km``),
  deterministic for ``--seed``. A share (``--offline-share``) goes offline
  and is no longer available.
* Cells: real ``CellActor``s on a local Ray (or the Ray this process already
  runs), created the way the front door creates them (``cell-<h3 index>``,
  namespace ``hexdispatch``, detached), over a fresh database migrated by the
  project's migrations and dropped afterwards. Drivers arrive through
  ``push_gps`` batches; the offline ones then say so through
  ``driver_message``. While the bench runs, the available drivers' fixes are
  pushed again every third of the heartbeat TTL, as their phones would, so no
  cell loses them.
* Redis: the available drivers (Redis keeps only those in its geo set),
  GEOADDed through a pipeline into a key this run owns and deletes.
* Queries: ``--queries`` points from the same density (demand follows
  supply), asked of both sides, interleaved. The caller fans out to every
  cell whose drivers may lie within the radius (the cell's outline plus the
  reach of its finest descendants) and merges by (distance, id).

Reported (p50/p95/p99/mean): the in-actor time of the cell holding the
point (wall clock, and CPU time), the in-actor time summed over every cell
of the fan-out, the whole fan-out as a Ray caller sees it (round trips and
merge), and GEOSEARCH as a redis-py client sees it, interleaved with the
cells and again alone once the actors are gone (plus Redis's own
server-side time from INFO); the ratios in-actor / Redis; and how often both
sides return the same 10 drivers. Exits 1 if the target (against both
Redis figures) is missed or the answers disagree.

Usage: ``hexdispatch bench nearest [--drivers N --queries N --json FILE --out DIR
--redis-url URL --database-url URL ...]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from bench import catalog_metro as metro
from bench.machine import describe, machine_facts
from bench.plots import save
from dispatch.geo import EARTH_RADIUS_M
from server.cli import parser_for

REPO = Path(__file__).resolve().parents[1]
TWO_MILES_M = 2 * 1609.344
METRES_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180.0
TARGET_RATIO = 0.1
#: Both answers count as the same when the drivers they differ in sit this close to the cut (the k-th
#: distance, or the radius): Redis stores positions as 52-bit geohashes (about 0.3 m) and measures
#: with another Earth radius (6,372,797.6 m against our 6,371,008.8 m, 0.03%).
AGREEMENT_TOLERANCE_M = 1.0
AGREEMENT_TOLERANCE_REL = 5e-4
#: Members per GEOADD, and per pipeline round trip.
GEOADD_MEMBERS = 500
GEOADD_PIPELINE = 10_000


# --------------------------------------------------------------------------- the metro


@dataclass
class Fleet:
    """The drivers of the bench: ids, positions, availability and owning cell, index-aligned."""

    ids: list[str]
    lat: np.ndarray
    lng: np.ndarray
    available: np.ndarray
    cell: list[str]

    def distance_from(self, lat: float, lng: float):
        """A function: driver id -> great-circle metres from (lat, lng) to that driver."""
        from dispatch.geo import haversine_m

        def distance_of(driver_id: str) -> float:
            i = int(driver_id.rsplit("-", 1)[1])
            return haversine_m(lat, lng, float(self.lat[i]), float(self.lng[i]))

        return distance_of


def metro_points(rng: np.random.Generator, n: int, half_side_km: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on land from the catalog's metro density model, shrunk to a box of ``half_side_km``."""
    scale = half_side_km / metro.HALF_SIDE_KM
    centre_lat, centre_lng = metro.CENTRE
    per_km_lat, per_km_lng = metro.deg_per_km(centre_lat)
    shares = np.array([h[4] for h in metro.HOTSPOTS] + [metro.UNIFORM_SHARE])
    shore_lat = [p[0] for p in metro.SHORELINE]
    shore_lng = [p[1] for p in metro.SHORELINE]
    lats, lngs, have = [], [], 0
    while have < n:
        m = int((n - have) * 1.5) + 16
        component = rng.choice(len(shares), size=m, p=shares / shares.sum())
        lat = centre_lat + rng.uniform(-half_side_km, half_side_km, m) * per_km_lat
        lng = centre_lng + rng.uniform(-half_side_km, half_side_km, m) * per_km_lng
        for index, (_, h_lat, h_lng, sigma_km, _) in enumerate(metro.HOTSPOTS):
            mask = component == index
            spread = sigma_km * scale
            lat[mask] = centre_lat + (h_lat - centre_lat) * scale + rng.normal(0, spread, mask.sum()) * per_km_lat
            lng[mask] = centre_lng + (h_lng - centre_lng) * scale + rng.normal(0, spread, mask.sum()) * per_km_lng
        keep = ((np.abs(lat - centre_lat) <= half_side_km * per_km_lat)
                & (np.abs(lng - centre_lng) <= half_side_km * per_km_lng)
                & (lng < np.interp(lat, shore_lat, shore_lng)))
        lats.append(lat[keep])
        lngs.append(lng[keep])
        have += int(keep.sum())
    return np.concatenate(lats)[:n], np.concatenate(lngs)[:n]


def make_fleet(seed: int, n: int, half_side_km: float, offline_share: float, cell_res: int) -> Fleet:
    """``n`` drivers (ids ``drv-<index>``), a deterministic ``offline_share`` of them offline."""
    from actors.cell import cell_of_point

    rng = np.random.default_rng(seed)
    lat, lng = metro_points(rng, n, half_side_km)
    available = rng.random(n) >= offline_share
    ids = [f"drv-{i:07d}" for i in range(n)]
    cells = [cell_of_point(a, b, cell_res) for a, b in zip(lat.tolist(), lng.tolist())]
    return Fleet(ids, lat, lng, available, cells)


# --------------------------------------------------------------------------- which cells a query asks


class CellCover:
    """The cells whose drivers may lie within a radius of a point.

    A cell owns the drivers whose finest H3 cell descends from it
    (``actors.cell.cell_of_point``); those reach up to about one edge of the
    next finer resolution beyond the cell's outline, so a cell is asked when
    its outline is within the radius plus that edge.
    """

    def __init__(self, res: int, cells: set[str]):
        import h3.api.basic_int as h3

        from dispatch.cells import EDGE_SHRINK

        self.h3 = h3
        self.res = res
        self.cells = cells
        self.margin_m = h3.average_hexagon_edge_length(min(res + 1, 15), "m")
        edge_m = h3.average_hexagon_edge_length(res, "m")
        # Centres of neighbouring cells are at least sqrt(3) x (smallest edge) apart (see dispatch.cells).
        self.spacing_m = math.sqrt(3) * edge_m / EDGE_SHRINK
        self.largest_edge_m = edge_m * EDGE_SHRINK
        self._outline: dict[str, list[tuple[float, float]]] = {}

    def plan(self, lat: float, lng: float, radius_m: float) -> tuple[str, list[str]]:
        """(the cell holding the point, the cells with an actor to ask: that one first when it has one)."""
        from actors.cell import cell_of_point

        h3 = self.h3
        reach = radius_m + self.margin_m
        rings = int(math.ceil((reach + 2 * self.largest_edge_m) / self.spacing_m)) + 1
        home = cell_of_point(lat, lng, self.res)
        chosen = [home] if home in self.cells else []
        for cell in h3.grid_disk(h3.latlng_to_cell(lat, lng, self.res), rings):
            cell_id = h3.int_to_str(cell)
            if cell_id != home and cell_id in self.cells and self.distance_m(lat, lng, cell_id) <= reach:
                chosen.append(cell_id)
        return home, chosen

    def distance_m(self, lat: float, lng: float, cell_id: str) -> float:
        """Metres from a point to a cell's outline (0 inside), on the local tangent plane."""
        outline = self._outline.get(cell_id)
        if outline is None:
            outline = self._outline[cell_id] = list(self.h3.cell_to_boundary(self.h3.str_to_int(cell_id)))
        cos_lat = math.cos(math.radians(lat))
        points = [((v_lng - lng) * cos_lat * METRES_PER_DEGREE, (v_lat - lat) * METRES_PER_DEGREE)
                  for v_lat, v_lng in outline]
        inside = False
        best = math.inf
        for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1]):
            if (y1 > 0) != (y2 > 0) and x1 - y1 * (x2 - x1) / (y2 - y1) > 0:
                inside = not inside
            dx, dy = x2 - x1, y2 - y1
            t = max(0.0, min(1.0, -(x1 * dx + y1 * dy) / (dx * dx + dy * dy)))
            best = min(best, math.hypot(x1 + t * dx, y1 + t * dy))
        return 0.0 if inside else best


def merge(answers: list[dict], k: int) -> list[dict]:
    """The ``k`` nearest of several cells' answers, by (distance, id)."""
    drivers = [d for answer in answers for d in answer["drivers"]]
    drivers.sort(key=lambda d: (d["distance_m"], d["id"]))
    return drivers[:k]


# --------------------------------------------------------------------------- agreement


def compare(ours: list[dict], redis_ids: list[str], distance_of, k: int, radius_m: float) -> str:
    """``order`` (same ids, same order), ``set`` (same ids; order differs only between near-equal
    distances), ``tolerance`` (ids differ only at the cut) or ``differs``."""
    our_ids = [d["id"] for d in ours]
    if our_ids == redis_ids:
        return "order"
    cut = ours[-1]["distance_m"] if len(ours) == k else radius_m
    tolerance = AGREEMENT_TOLERANCE_M + AGREEMENT_TOLERANCE_REL * cut
    if set(our_ids) == set(redis_ids):
        if all(abs(distance_of(a) - distance_of(b)) <= tolerance for a, b in zip(our_ids, redis_ids)):
            return "set"
        return "differs"
    if all(abs(distance_of(i) - cut) <= tolerance for i in set(our_ids) ^ set(redis_ids)):
        return "tolerance"
    return "differs"


# --------------------------------------------------------------------------- cells on Ray


def gather(refs: list, desc: str, unit: str = "call") -> list:
    """``ray.get`` of many calls, with a progress bar."""
    import ray

    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit=unit) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=min(len(pending), 32), timeout=1.0)
            bar.update(len(done))
    return ray.get(list(refs))


def batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class Cells:
    """The bench's cell actors: created like the front door's, loaded, kept alive, asked, killed."""

    def __init__(self, dsn: str, cell_ids: list[str]):
        import ray

        from actors.cell import NAMESPACE, actor_name, cell_actor_class
        from server.config import Settings
        from server.gateway import cell_placement

        self.params = Settings.from_env().gateway
        self.gateway_id = f"bench-nearest-{secrets.token_hex(3)}"
        placement = cell_placement(self.params.cell_resource, ray.cluster_resources())
        actor_class = cell_actor_class()
        self.handles = {
            cell_id: actor_class.options(
                name=actor_name(cell_id), namespace=NAMESPACE, get_if_exists=True, lifetime="detached", **placement,
            ).remote(cell_id, dsn, self.params.cell, self.params.cell_tick_s)
            for cell_id in cell_ids
        }
        self._keep_alive: threading.Thread | None = None
        self._stop = threading.Event()
        self.keep_alive_rounds = 0
        self.keep_alive_errors = 0
        self._closed = False

    def start(self) -> None:
        """Start every cell (rebuilt from the empty database); refuse cells that already hold state."""
        states = gather([h.ready.remote() for h in self.handles.values()], "start cell actors", "cell")
        stale = [s["cell"] for s in states if sum(s["drivers"].values()) or s["pending_orders"]]
        if stale:
            raise RuntimeError(f"cell actors already hold drivers or orders (not this run's): {stale[:5]}")

    def push(self, fleet: Fleet, indices: np.ndarray, batch: int, desc: str) -> None:
        """Push the fixes of ``indices`` to their cells in ``batch``-sized ``push_gps`` calls."""
        gather([self.handles[cell].push_gps.remote(self.gateway_id, fixes)
                for cell, fixes in self._fix_batches(fleet, indices, batch)], desc)

    def _fix_batches(self, fleet: Fleet, indices: np.ndarray, batch: int) -> list[tuple[str, list[tuple]]]:
        by_cell: dict[str, list[tuple]] = {}
        for i in indices.tolist():
            by_cell.setdefault(fleet.cell[i], []).append(
                (fleet.ids[i], float(fleet.lat[i]), float(fleet.lng[i]), None, None, 1))
        return [(cell, chunk) for cell, fixes in by_cell.items() for chunk in batches(fixes, batch)]

    def go_offline(self, fleet: Fleet, indices: np.ndarray) -> int:
        """Each driver of ``indices`` tells its cell it goes offline; returns how many calls were refused."""
        refs = [self.handles[fleet.cell[i]].driver_message.remote(self.gateway_id, fleet.ids[i], "offline", {})
                for i in indices.tolist()]
        return sum(1 for errors in gather(refs, "drivers going offline") if errors)

    def keep_alive(self, fleet: Fleet, batch: int) -> None:
        """From now on, push the available drivers' fixes again every third of the heartbeat TTL."""
        import ray

        work = [(self.handles[cell], fixes)
                for cell, fixes in self._fix_batches(fleet, np.flatnonzero(fleet.available), batch)]
        period = self.params.cell.heartbeat_ttl_s / 3.0

        def run() -> None:
            while not self._stop.wait(period):
                try:
                    ray.get([handle.push_gps.remote(self.gateway_id, fixes) for handle, fixes in work])
                    self.keep_alive_rounds += 1
                except Exception:  # a failed round is retried on the next; the count says it happened
                    self.keep_alive_errors += 1

        self._keep_alive = threading.Thread(target=run, name="bench-nearest-keep-alive", daemon=True)
        self._keep_alive.start()

    def census(self) -> dict[str, int]:
        """Drivers held by all cells together, by status."""
        import ray

        totals: dict[str, int] = {}
        for state in ray.get([h.ready.remote() for h in self.handles.values()]):
            for status, count in state["drivers"].items():
                totals[status] = totals.get(status, 0) + count
        return totals

    def ask(self, cells: list[str], lat: float, lng: float, radius_m: float, k: int) -> list[dict]:
        """Every listed cell's answer, asked all at once."""
        import ray

        return ray.get([self.handles[c].nearest_drivers.remote(lat, lng, radius_m, k) for c in cells])

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the keep-alive, kill the (detached) actors and wait until their names are free (idempotent)."""
        import ray

        from actors.cell import NAMESPACE, actor_name

        self._stop.set()
        if self._keep_alive is not None:
            self._keep_alive.join(timeout=60)
            self._keep_alive = None
        if self._closed:
            return
        self._closed = True
        for handle in self.handles.values():
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                pass
        deadline = time.monotonic() + timeout_s
        alive = list(self.handles)
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [c for c in alive if _named_actor_exists(actor_name(c), NAMESPACE)]


def _named_actor_exists(name: str, namespace: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace=namespace)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- Redis


class RedisGeo:
    """The available drivers in a Redis geo set this run owns (deleted by :meth:`close`)."""

    def __init__(self, url: str):
        import redis

        self.client = redis.Redis.from_url(url)
        self.key = f"hexdispatch:bench:nearest:{secrets.token_hex(4)}:available"
        self.version = self.client.info("server").get("redis_version", "?")

    def load(self, fleet: Fleet) -> None:
        indices = np.flatnonzero(fleet.available).tolist()
        with tqdm(total=len(indices), desc="GEOADD", unit="driver", unit_scale=True) as bar:
            for chunk in batches(indices, GEOADD_PIPELINE):
                pipe = self.client.pipeline(transaction=False)
                for command in batches(chunk, GEOADD_MEMBERS):
                    values: list = []
                    for i in command:
                        values += [float(fleet.lng[i]), float(fleet.lat[i]), fleet.ids[i]]
                    pipe.geoadd(self.key, values)
                pipe.execute()
                bar.update(len(chunk))

    def search(self, lat: float, lng: float, radius_m: float, k: int) -> list[str]:
        """GEOSEARCH FROMLONLAT BYRADIUS m ASC COUNT k: the member ids, nearest first."""
        found = self.client.geosearch(self.key, longitude=lng, latitude=lat, radius=radius_m, unit="m",
                                      sort="ASC", count=k)
        return [m.decode() for m in found]

    def command_stats(self) -> dict:
        """GEOSEARCH calls and microseconds so far, server-wide (INFO commandstats)."""
        stats = self.client.info("commandstats").get("cmdstat_geosearch", {})
        return {"calls": int(stats.get("calls", 0)), "usec": int(stats.get("usec", 0))}

    def latency_percentiles_us(self) -> dict | None:
        """Redis's own GEOSEARCH latency percentiles since it started (INFO latencystats, Redis 7+)."""
        import redis

        try:
            entry = self.client.info("latencystats").get("latency_percentiles_usec_geosearch")
        except redis.ResponseError:
            return None
        if isinstance(entry, str):
            entry = dict(part.split("=") for part in entry.split(","))
        return {key: float(value) for key, value in entry.items()} if entry else None

    def close(self) -> None:
        self.client.delete(self.key)
        self.client.close()


# --------------------------------------------------------------------------- the run


def percentiles(samples_s: list[float]) -> dict:
    """p50/p95/p99/mean/max in milliseconds of samples in seconds (NaN samples left out)."""
    values = np.asarray(samples_s, dtype=float)
    values = values[~np.isnan(values)] * 1000.0
    if not len(values):
        return {"n": 0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"n": int(len(values)), "p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4), "mean_ms": round(float(values.mean()), 4),
            "max_ms": round(float(values.max()), 4)}


def drivers_within(fleet: Fleet, lat: np.ndarray, lng: np.ndarray, radius_m: float) -> np.ndarray:
    """How many available drivers lie within ``radius_m`` of each query (tangent-plane count)."""
    from scipy.spatial import cKDTree

    cos_lat = math.cos(math.radians(metro.CENTRE[0]))

    def xy(a, b):
        return np.column_stack(((b - metro.CENTRE[1]) * cos_lat * METRES_PER_DEGREE,
                                (a - metro.CENTRE[0]) * METRES_PER_DEGREE))

    available = fleet.available
    tree = cKDTree(xy(fleet.lat[available], fleet.lng[available]))
    return np.asarray(tree.query_ball_point(xy(lat, lng), radius_m, return_length=True))


def run(args: argparse.Namespace, dsn: str) -> dict:
    """Load both sides, ask both the same queries, and return the figures (Ray must be running).

    Latencies per query are returned under ``"_samples"`` (for the plots, not the JSON).
    """
    from server.config import Settings

    started = time.perf_counter()
    cell_res = Settings.from_env().gateway.cell_res  # as a front door started here would use it
    fleet = make_fleet(args.seed, args.drivers, args.half_side_km, args.offline_share, cell_res)
    q_lat, q_lng = metro_points(np.random.default_rng(args.seed + 1), args.queries + args.warmup, args.half_side_km)
    cell_ids = sorted(set(fleet.cell))
    per_cell = np.bincount(np.unique(np.array(fleet.cell), return_inverse=True)[1])
    figures: dict = {
        "drivers": args.drivers, "available": int(fleet.available.sum()),
        "offline": int((~fleet.available).sum()), "queries": args.queries, "warmup_queries": args.warmup,
        "k": args.k, "radius_m": args.radius_m, "half_side_km": args.half_side_km, "seed": args.seed,
        "cell_res": cell_res, "cells": len(cell_ids), "cell_ids": cell_ids,
        "drivers_per_cell": {"max": int(per_cell.max()), "median": float(np.median(per_cell)),
                             "min": int(per_cell.min())},
    }
    load: dict = {}
    redis_geo = RedisGeo(args.redis_url)
    cells = None
    try:
        t = time.perf_counter()
        cells = Cells(dsn, cell_ids)
        cells.start()
        load["start_cells_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        cells.push(fleet, np.arange(args.drivers), args.batch, "push_gps")
        load["push_gps_s"] = round(time.perf_counter() - t, 2)
        cells.keep_alive(fleet, args.batch)
        t = time.perf_counter()
        load["offline_refused"] = cells.go_offline(fleet, np.flatnonzero(~fleet.available))
        load["go_offline_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        redis_geo.load(fleet)
        load["geoadd_s"] = round(time.perf_counter() - t, 2)
        load["redis_members"] = int(redis_geo.client.zcard(redis_geo.key))
        census = cells.census()
        load["cells_hold"] = census
        if census.get("idle", 0) != figures["available"] or census.get("offline", 0) != figures["offline"]:
            raise RuntimeError(f"the cells hold {census}, expected {figures['available']} idle and "
                               f"{figures['offline']} offline")
        figures["load"] = load
        cover = CellCover(cell_res, set(cell_ids))
        figures["measure"], samples = measure(args, fleet, cells, cover, redis_geo, q_lat, q_lng)
        figures["load"]["keep_alive_rounds"] = cells.keep_alive_rounds
        figures["load"]["keep_alive_errors"] = cells.keep_alive_errors
        figures["redis"] = {"version": redis_geo.version, "key": redis_geo.key, **samples.pop("redis_server")}
        # The same queries once more, to Redis alone: no cell actor left to share the machine with.
        cells.close()
        samples["redis_alone"], figures["redis"]["alone_server_mean_ms"] = measure_redis_alone(
            args, redis_geo, q_lat, q_lng)
        figures["measure"]["latency"] = {name: percentiles(samples[name]) for name in LABELS}
    finally:
        if cells is not None:
            cells.close()
        redis_geo.close()
    samples["within_radius"] = drivers_within(fleet, q_lat[args.warmup:], q_lng[args.warmup:], args.radius_m)
    figures["within_radius"] = {"median": float(np.median(samples["within_radius"])),
                                "max": int(samples["within_radius"].max())}
    figures["verdict"] = verdict(figures)
    figures["total_s"] = round(time.perf_counter() - started, 1)
    figures["_samples"] = samples
    return figures


def measure(args, fleet: Fleet, cells: Cells, cover: CellCover, redis_geo: RedisGeo, q_lat, q_lng
            ) -> tuple[dict, dict]:
    """Ask both sides every query (warm-up first, unmeasured); returns (figures, per-query samples)."""
    plans = [cover.plan(a, b, args.radius_m) for a, b in zip(q_lat.tolist(), q_lng.tolist())]
    # Warm-up: every cell once (its first search loads the compiled kernel), then the warm-up queries.
    cells.ask(list(cells.handles), float(q_lat[0]), float(q_lng[0]), args.radius_m, args.k)
    samples: dict[str, list] = {name: [] for name in LABELS if name != "redis_alone"}
    outcomes: dict[str, int] = {"order": 0, "set": 0, "tolerance": 0, "differs": 0}
    examples: list[dict] = []
    fanout_sizes: list[int] = []
    home_missing = 0

    before = redis_geo.command_stats()
    for q in tqdm(range(len(plans)), desc="queries", unit="query"):
        lat, lng = float(q_lat[q]), float(q_lng[q])
        home, plan = plans[q]

        def ask_cells():
            t0 = time.perf_counter()
            answers = cells.ask(plan, lat, lng, args.radius_m, args.k)
            merged = merge(answers, args.k)
            return time.perf_counter() - t0, answers, merged

        def ask_redis():
            t0 = time.perf_counter()
            found = redis_geo.search(lat, lng, args.radius_m, args.k)
            return time.perf_counter() - t0, found

        if q % 2:  # alternate who goes first, so neither always meets the other's leftovers
            redis_s, redis_ids = ask_redis()
            fanout_s, answers, merged = ask_cells()
        else:
            fanout_s, answers, merged = ask_cells()
            redis_s, redis_ids = ask_redis()
        if q < args.warmup:
            continue
        at_home = [a for a in answers if a["cell"] == home]
        if not at_home:
            home_missing += 1
        samples["in_actor_home"].append(at_home[0]["compute_s"] if at_home else math.nan)
        samples["in_actor_home_cpu"].append(at_home[0]["compute_cpu_s"] if at_home else math.nan)
        samples["in_actor_all_cells"].append(sum(a["compute_s"] for a in answers))
        samples["in_actor_all_cells_cpu"].append(sum(a["compute_cpu_s"] for a in answers))
        samples["ray_fanout"].append(fanout_s)
        samples["redis"].append(redis_s)
        fanout_sizes.append(len(plan))
        distance_of = fleet.distance_from(lat, lng)
        outcome = compare(merged, redis_ids, distance_of, args.k, args.radius_m)
        outcomes[outcome] += 1
        if outcome == "differs" and len(examples) < 5:
            examples.append({"lat": lat, "lng": lng, "cells": [d["id"] for d in merged], "redis": redis_ids,
                             "cell_distances_m": [round(d["distance_m"], 3) for d in merged],
                             "redis_distances_m": [round(distance_of(i), 3) for i in redis_ids]})
    after = redis_geo.command_stats()
    ours = len(plans)
    calls = after["calls"] - before["calls"]
    server: dict = {"geosearch_calls": calls, "our_calls": ours,
                    "server_mean_ms": round((after["usec"] - before["usec"]) / max(calls, 1) / 1000.0, 4)}
    if before["calls"] == 0 and calls == ours:  # nobody else's GEOSEARCH in Redis's histogram
        server["server_percentiles_us"] = redis_geo.latency_percentiles_us()
    n = args.queries
    figures = {
        "fanout_cells": {"mean": round(float(np.mean(fanout_sizes)), 2), "max": int(max(fanout_sizes))},
        "home_cell_without_actor": home_missing,
        "agreement": {"queries": n, "same_order": outcomes["order"],
                      "same_set": outcomes["order"] + outcomes["set"],
                      "within_tolerance": n - outcomes["differs"], "differs": outcomes["differs"],
                      "rate": round((n - outcomes["differs"]) / n, 6) if n else None,
                      "tolerance": f"{AGREEMENT_TOLERANCE_M} m + {AGREEMENT_TOLERANCE_REL:g} x the cut distance",
                      "examples": examples},
    }
    samples["redis_server"] = server
    return figures, samples


def measure_redis_alone(args, redis_geo: RedisGeo, q_lat, q_lng) -> tuple[list[float], float]:
    """GEOSEARCH round trips of the same queries with nothing else of the bench running (warm-up first).

    Returns (latencies in seconds, Redis's server-side mean in ms per call).
    """
    latencies = []
    before = redis_geo.command_stats()
    for q in tqdm(range(len(q_lat)), desc="queries, Redis alone", unit="query"):
        t0 = time.perf_counter()
        redis_geo.search(float(q_lat[q]), float(q_lng[q]), args.radius_m, args.k)
        if q >= args.warmup:
            latencies.append(time.perf_counter() - t0)
    after = redis_geo.command_stats()
    calls = max(after["calls"] - before["calls"], 1)
    return latencies, round((after["usec"] - before["usec"]) / calls / 1000.0, 4)


def verdict(figures: dict) -> dict:
    """Ratios to Redis of every measure, and whether the target is met.

    The target is on the in-actor time of a query, that of the cell holding
    the point (wall clock): at most 0.1x Redis at p50 and at p99, against
    Redis measured both interleaved with the cells and alone.
    """
    latency = figures["measure"]["latency"]
    ratios = {}
    for name in LABELS:
        if not name.startswith("redis"):
            for q in ("p50", "p99"):
                ours = latency[name].get(f"{q}_ms", math.nan)
                ratios[f"{name}_{q}"] = round(ours / latency["redis"][f"{q}_ms"], 5)
                ratios[f"{name}_{q}_vs_redis_alone"] = round(ours / latency["redis_alone"][f"{q}_ms"], 5)
    gated = ("in_actor_home_p50", "in_actor_home_p99",
             "in_actor_home_p50_vs_redis_alone", "in_actor_home_p99_vs_redis_alone")
    target_met = all(ratios[name] <= TARGET_RATIO for name in gated)
    agreement = figures["measure"]["agreement"]
    agree = agreement["differs"] == 0
    return {"ratios": ratios, "target_ratio": TARGET_RATIO, "gated_on": list(gated), "target_met": target_met,
            "answers_agree": agree, "passed": target_met and agree}


# --------------------------------------------------------------------------- report


LABELS = {
    "in_actor_home": "in-actor, the cell holding the point (the target's measure)",
    "in_actor_home_cpu": "in-actor, the cell holding the point, CPU time of the actor's thread",
    "in_actor_all_cells": "in-actor, summed over the fan-out's cells",
    "in_actor_all_cells_cpu": "in-actor, summed over the fan-out's cells, CPU time",
    "ray_fanout": "whole fan-out as a Ray caller sees it (round trips, merge)",
    "redis": "Redis GEOSEARCH, redis-py round trip",
    "redis_alone": "Redis GEOSEARCH, redis-py round trip, cell actors gone",
}
#: The measures drawn in the plots.
PLOTTED = ("in_actor_home", "in_actor_all_cells", "ray_fanout", "redis", "redis_alone")


def markdown_report(figures: dict) -> str:
    latency = figures["measure"]["latency"]
    verdict_ = figures["verdict"]
    ratios = verdict_["ratios"]
    agreement = figures["measure"]["agreement"]
    redis = figures["redis"]
    lines = [
        "# Nearest available drivers: cell actors vs Redis GEOSEARCH",
        "",
        f"{figures['drivers']:,} drivers ({figures['available']:,} available, {figures['offline']:,} offline) over "
        f"a Chicago metro ({2 * figures['half_side_km']:g} km box, lake cut out, dense downtown) in "
        f"{figures['cells']} resolution-{figures['cell_res']} cell actors (at most "
        f"{figures['drivers_per_cell']['max']:,} drivers in one, median {figures['drivers_per_cell']['median']:,.0f}). "
        f"{figures['queries']:,} queries \"the {figures['k']} nearest available drivers within "
        f"{figures['radius_m']:,.1f} m\" at points drawn from the same density (median "
        f"{figures['within_radius']['median']:,.0f} available drivers within the radius, at most "
        f"{figures['within_radius']['max']:,}); each query is asked of both sides, interleaved; the caller "
        f"asks {figures['measure']['fanout_cells']['mean']:.1f} cells on average "
        f"(at most {figures['measure']['fanout_cells']['max']}). Redis {redis['version']}.",
        "",
        f"Machine: {describe(figures['environment'])}." if "environment" in figures else "",
        "",
        "| measure | p50 ms | p95 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        r = latency[name]
        lines.append(f"| {label} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} |")
    met = "met" if verdict_["target_met"] else "**missed**"
    lines += [
        "",
        f"Ratio in-actor / Redis, the cell holding the point: p50 {ratios['in_actor_home_p50']:.4f}x, "
        f"p99 {ratios['in_actor_home_p99']:.4f}x; against Redis alone p50 "
        f"{ratios['in_actor_home_p50_vs_redis_alone']:.4f}x, p99 {ratios['in_actor_home_p99_vs_redis_alone']:.4f}x "
        f"(target <= {TARGET_RATIO}x at p50 and p99, against both: {met}). "
        f"Summed over every cell of the fan-out: p50 {ratios['in_actor_all_cells_p50']:.4f}x, "
        f"p99 {ratios['in_actor_all_cells_p99']:.4f}x. The whole fan-out through Ray: p50 "
        f"{ratios['ray_fanout_p50']:.3f}x, p99 {ratios['ray_fanout_p99']:.3f}x of Redis.",
        "",
        f"Redis server-side (INFO commandstats): {redis['server_mean_ms']:.3f} ms per GEOSEARCH on average "
        f"interleaved with the cells ({redis['geosearch_calls']:,} calls, {redis['our_calls']:,} of them this "
        f"run's), {redis['alone_server_mean_ms']:.3f} ms alone.",
    ]
    percentiles_us = redis.get("server_percentiles_us")
    if percentiles_us:
        shown = ", ".join(f"{name} {us / 1000:.3f} ms" for name, us in percentiles_us.items())
        lines[-1] += f" INFO latencystats (interleaved): {shown}."
    lines += [
        "",
        f"Agreement: the same {figures['k']} drivers in the same order at {agreement['same_order']:,} of "
        f"{agreement['queries']:,} queries, the same set at {agreement['same_set']:,}, the same up to the cut "
        f"({agreement['tolerance']}) at {agreement['within_tolerance']:,}; {agreement['differs']} differ.",
        "",
        f"Load: cells started in {figures['load']['start_cells_s']} s, {figures['drivers']:,} fixes pushed in "
        f"{figures['load']['push_gps_s']} s, {figures['offline']:,} drivers offline in "
        f"{figures['load']['go_offline_s']} s, GEOADD in {figures['load']['geoadd_s']} s; the available drivers' "
        f"fixes re-pushed {figures['load']['keep_alive_rounds']} times during the run. Total {figures['total_s']} s.",
    ]
    return "\n".join(lines) + "\n"


def plot(samples: dict, out: Path) -> list[str]:
    """Latency histograms and CDFs of the four measures, and latency against drivers within the radius."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {name: np.asarray(samples[name], float) * 1000.0 for name in PLOTTED}
    series = {name: values[~np.isnan(values)] for name, values in series.items()}
    colours = {"in_actor_home": "#2a7f3f", "in_actor_all_cells": "#7fbf7b", "ray_fanout": "#4878a8",
               "redis": "#c0504d", "redis_alone": "#e3a33b"}
    low = max(min(v.min() for v in series.values() if len(v)), 1e-4)
    high = max(v.max() for v in series.values() if len(v))
    bins = np.logspace(np.log10(low), np.log10(high * 1.01), 80)
    written = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in series.items():
        p50, p99 = np.percentile(values, [50, 99])
        ax.hist(values, bins=bins, alpha=0.55, color=colours[name],
                label=f"{LABELS[name].split(' (')[0]}: p50 {p50:.3f}, p99 {p99:.3f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency per query (ms, log scale)")
    ax.set_ylabel("queries")
    ax.set_title("10 nearest available drivers within 2 miles", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    written.append(save(fig, out / "nearest_latency.png"))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in series.items():
        ordered = np.sort(values)
        ax.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), color=colours[name], label=LABELS[name])
    ax.set_xscale("log")
    ax.axhline(0.5, color="grey", linewidth=0.5, linestyle="--")
    ax.axhline(0.99, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("latency per query (ms, log scale)")
    ax.set_ylabel("share of queries at most this")
    ax.legend(fontsize=7, loc="lower right")
    written.append(save(fig, out / "nearest_cdf.png"))

    within = np.asarray(samples["within_radius"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in ("redis", "redis_alone", "in_actor_home"):
        values = np.asarray(samples[name], float) * 1000.0
        keep = ~np.isnan(values)
        ax.scatter(within[keep], values[keep], s=4, alpha=0.5, color=colours[name], label=LABELS[name])
    ax.set_yscale("log")
    ax.set_xlabel("available drivers within the radius")
    ax.set_ylabel("latency (ms, log scale)")
    ax.legend(fontsize=7, loc="upper left")
    written.append(save(fig, out / "nearest_vs_density.png"))
    return written


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options; defaults are the issue's figures."""
    parser = parser_for("hexdispatch bench nearest", __doc__)
    parser.add_argument("--drivers", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=2_000, help="measured queries")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured queries first")
    parser.add_argument("--k", type=int, default=10, help="drivers per answer")
    parser.add_argument("--radius-m", type=float, default=TWO_MILES_M, help="search radius (default 2 miles)")
    parser.add_argument("--offline-share", type=float, default=0.1, help="share of drivers that go offline")
    parser.add_argument("--half-side-km", type=float, default=metro.HALF_SIDE_KM,
                        help="half the side of the metro box around the Loop")
    parser.add_argument("--batch", type=int, default=1000, help="fixes per push_gps call")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="a Postgres where the bench may create (and drop) a database for the cells "
                             "(default $DATABASE_URL, else an embedded Postgres in a temporary directory)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "nearest",
                        help="markdown, JSON and plots go here")
    args = parser.parse_args(argv)
    if args.drivers <= 0 or args.queries <= 0 or args.k <= 0 or args.warmup < 0 or args.batch <= 0:
        parser.error("--drivers, --queries, --k and --batch must be positive, --warmup not negative")
    if not 0.0 <= args.offline_share < 1.0:
        parser.error("--offline-share must be in [0, 1)")
    return args


def environment(args: argparse.Namespace, where: str) -> dict:
    import ray

    return {**machine_facts(), "ray": ray.__version__, "postgres": where}


def main(argv: list[str]) -> int:
    """Run the benchmark; print the table, write markdown, JSON and plots; 1 if the target is missed."""
    import ray

    from bench.catalog import admin_dsn, fresh_database
    from server import db

    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started_ray = False
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        started_ray = True
    try:
        with admin_dsn(args.database_url) as (admin, where), fresh_database(admin, keep=False) as dsn:
            db.migrate_sync(dsn)
            figures = run(args, dsn)
            figures["database"] = urlsplit(dsn).path.lstrip("/")
            figures["environment"] = environment(args, where)
    finally:
        if started_ray:
            ray.shutdown()
    samples = figures.pop("_samples")
    figures["plots"] = plot(samples, args.out)
    report = markdown_report(figures)
    print()
    print(report)
    text = json.dumps(figures, indent=2)
    (args.out / "nearest.md").write_text(report)
    (args.out / "nearest.json").write_text(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    if not figures["verdict"]["passed"]:
        print("target missed or answers disagree: see the verdict above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
