"""``hexdispatch bench chaos``: the peak hour's city while faults are injected one after another.

The bench starts its own world (``bench.chaos_env``): a Postgres cluster, a
Redis, a Ray head plus one worker node (both offering ``cell_host``), and
``hexdispatch serve --workers 2`` joined to them, all on free loopback
ports. It seeds kitchens and runs ``bench peak``'s city (drivers moving,
taking offers and delivering; customers ordering and following their
orders, reconnecting and resuming with ``after_seq`` as the apps do) for a
control window, then one window per fault, each fault injected at the start
of its window and the rest of the window left for recovery:

* ``cell``: SIGKILL of the busiest cell actor's process (found through Ray's
  state API); Ray restarts it and it rebuilds from Postgres;
* ``front_door``: SIGKILL of one front-door worker process (uvicorn starts a
  new one; its sockets reconnect to either);
* ``redis``: Redis stopped and started again, empty;
* ``postgres``: ``pg_ctl restart -m fast``;
* ``node``: the Ray worker node lost with every process on it (its cells come
  back on the head); a replacement node joins at the end of the window when
  another fault follows.

Then the open orders drain, and every acknowledged order is checked against
``order_events`` (``bench.chaos_audit``): per phase, orders lost, status
events lost, double assignments, orders stranded (no progress for
``--stall`` s when the window ends), and the recovery time: from the
injection until the orders placed from then on get offers with a p99 under
``--target-ms`` again (over ``--recovery-window`` s of placements). Writes
``chaos.md``, ``chaos.json`` and ``chaos_latency.png`` under ``--out``;
exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from bench import chaos_audit
from bench.chaos_audit import Phase
from bench.loadgen import Step
from bench.peak import REPO, System, add_city_arguments, run_city, seed, strip_private
from bench.plots import save
from server.cli import parser_for

FAULTS = ("cell", "front_door", "redis", "postgres", "node")
CONTROL = "none (control)"
TARGET_RECOVERY_S = 10.0
#: Recovery relative to the control: the rolling p99 back within this factor of the control phase's p99.
CONTROL_SLACK = 1.5


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------- the faults


@dataclass
class Injection:
    """One fault as it happened: when it was injected, how long the injection took, what it hit."""

    fault: str
    injected_at: float
    took_s: float = 0.0
    detail: str = ""
    error: str | None = None


def busiest_cell(world) -> str | None:
    """The cell with the most drivers, as the front doors' admin view reports it (None if it cannot say)."""
    from clients.city import minter

    token = minter(world.secret)("admin", "bench-chaos")
    try:
        reply = httpx.get(f"{world.front_doors.url}/v1/admin/cells", headers={"authorization": f"Bearer {token}"},
                          timeout=30)
        cells = reply.raise_for_status().json()["cells"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    busy = max(cells, key=lambda c: sum((c.get("drivers") or {}).values()), default=None)
    return busy["cell"] if busy else None


def kill_cell_actor(world) -> str:
    """SIGKILL the process of the busiest cell actor (any cell actor if the admin view does not answer)."""
    import os
    import signal

    from actors.cell import actor_name

    actors = world.ray.cell_actor_processes()
    if not actors:
        raise RuntimeError("no live cell actor to kill")
    cell = busiest_cell(world)
    target = next((a for a in actors if cell and a["name"] == actor_name(cell)), actors[0])
    os.kill(target["pid"], signal.SIGKILL)
    return f"{target['name']} (pid {target['pid']}) of {len(actors)} cell actors"


def kill_front_door(world) -> str:
    """SIGKILL one front-door worker of ``serve`` (the oldest)."""
    import os
    import signal

    pids = world.front_doors.worker_pids()
    if len(pids) < 2:
        raise RuntimeError(f"expected at least 2 front-door workers, found {pids}")
    os.kill(pids[0], signal.SIGKILL)
    return f"worker pid {pids[0]} of {pids}"


def restart_redis(world) -> str:
    world.redis.restart()
    return f"redis-server on port {world.redis.port} restarted empty"


def restart_postgres(world) -> str:
    world.postgres.restart()
    return f"pg_ctl restart -m fast on port {world.postgres.port}"


def lose_ray_node(world) -> str:
    actors = world.ray.cell_actor_processes()
    node = world.ray.lose_worker()
    return f"worker node (ray start pid {node.process.pid}) killed with its processes; {len(actors)} cell actors before"


INJECT = {"cell": kill_cell_actor, "front_door": kill_front_door, "redis": restart_redis,
          "postgres": restart_postgres, "node": lose_ray_node}


class FaultSchedule:
    """Injects the faults, one per window after a control window, from a thread of its own so that the
    bench keeps reading its load processes meanwhile; started by the first :meth:`tick` (when the load goes)."""

    def __init__(self, world, faults: list[str], window_s: float):
        self.world = world
        self.faults = faults
        self.window_s = window_s
        self.go_at: float | None = None
        self.injections: list[Injection] = []
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def tick(self) -> None:
        if self.thread is None:
            self.go_at = time.time()
            self.thread = threading.Thread(target=self._run, name="chaos-faults", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        for number, fault in enumerate(self.faults, start=1):
            if self.stopping.wait(max(0.0, self.go_at + number * self.window_s - time.time())):
                return
            injection = Injection(fault, time.time())
            try:
                injection.detail = INJECT[fault](self.world)
                say(f"fault {number}/{len(self.faults)} {fault}: {injection.detail}")
            except Exception as exc:
                injection.error = f"{type(exc).__name__}: {exc}"
                say(f"fault {number}/{len(self.faults)} {fault} could not be injected: {injection.error}")
            injection.took_s = time.time() - injection.injected_at
            self.injections.append(injection)
            if fault == "node" and number < len(self.faults):
                # The cells came back on the head; a replacement machine joins before the next fault.
                if not self.stopping.wait(max(0.0, self.go_at + (number + 1) * self.window_s - 5 - time.time())):
                    self.world.ray.add_worker()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=120)


# --------------------------------------------------------------------------- the audit trail


async def _fetch_events(dsn: str, order_ids: list[int]) -> dict[int, list[dict]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT order_id, seq, type, status, payload::text AS payload, extract(epoch FROM at)::float8 AS at"
            " FROM order_events WHERE order_id = ANY($1::bigint[]) ORDER BY order_id, seq", order_ids)
    finally:
        await conn.close()
    events: dict[int, list[dict]] = {}
    for row in rows:
        payload = json.loads(row["payload"])
        events.setdefault(row["order_id"], []).append(
            {"seq": row["seq"], "event": row["type"], "status": row["status"], "at": row["at"],
             "driver_id": payload.get("driver_id"), "job_id": payload.get("job_id")})
    return events


def fetch_events(dsn: str, order_ids: list[int]) -> dict[int, list[dict]]:
    """Every ``order_events`` row of these orders, oldest first per order (see :mod:`bench.chaos_audit`)."""
    return asyncio.run(_fetch_events(dsn, order_ids))


# --------------------------------------------------------------------------- figures


def phases_of(go_at: float, injections: list[Injection]) -> list[Phase]:
    return [Phase(CONTROL, go_at), *(Phase(f"{i + 1}. {inj.fault}", inj.injected_at)
                                     for i, inj in enumerate(injections))]


def account(args, go_at: float, load_end: float, injections: list[Injection], tally,
            events: dict[int, list[dict]]) -> dict:
    """The per-phase table (see :mod:`bench.chaos_audit`) from the run's records."""
    from dispatch.cell import DELIBERATE_WAITS

    phases = phases_of(go_at, injections)
    ends = [p.start for p in phases[1:]] + [load_end]
    lost = chaos_audit.lost_orders(phases, tally.placed_at, events, unfinished_is_lost=args.drain > 0)
    missed = chaos_audit.lost_status_events(phases, events, tally.seen_seqs, tally.followed_until)
    doubled = chaos_audit.double_assignments(phases, events)
    stranded = chaos_audit.stranded_orders([(p.name, end) for p, end in zip(phases, ends)], tally.placed_at, events,
                                           args.stall, tally.ready_estimate)
    latencies = chaos_audit.offer_latency_ms(tally.placed_at, tally.first_offer, DELIBERATE_WAITS)
    series = chaos_audit.rolling_p99(latencies, go_at, load_end, args.recovery_window)
    redispatched = chaos_audit.events_of_type(phases, events, "unassign")
    control = [ms for at, ms in latencies if at < ends[0]]
    # On a loaded machine the control itself may miss the target: recovery to within CONTROL_SLACK of the
    # control's own p99 is reported beside it.
    control_level = max(args.target_ms, CONTROL_SLACK * chaos_audit.p99(control)) if control else args.target_ms
    rows = []
    for index, (phase, end) in enumerate(zip(phases, ends)):
        injection = injections[index - 1] if index else None
        placed = [ms for at, ms in latencies if phase.start <= at < end]

        def recovered(level: float) -> float | None:
            took = chaos_audit.recovery_s(series, phase.start, level) if injection else None
            return took if took is None or took <= end - phase.start else None

        recovery, to_control = recovered(args.target_ms), recovered(control_level)
        rows.append({
            "phase": phase.name, "fault": injection.fault if injection else None,
            "starts_s": phase.start - go_at, "ends_s": end - go_at,
            "injection_took_s": injection.took_s if injection else None,
            "detail": injection.detail if injection else "", "injection_error": injection.error if injection else None,
            "orders_placed": sum(1 for t in tally.placed_at.values() if chaos_audit.phase_at(phases, t) == phase.name),
            "lost_orders": len(lost[phase.name]), "lost_status_events": len(missed[phase.name]),
            "double_assignments": len(doubled[phase.name]), "stranded_orders": len(stranded[phase.name]),
            "recovery_s": recovery, "recovery_to_control_s": to_control,
            "redispatched_orders": len(redispatched[phase.name]),
            "placement_to_offer_p99_ms": chaos_audit.p99(placed) if placed else None,
            "examples": {"lost_orders": lost[phase.name][:5], "lost_status_events": missed[phase.name][:5],
                         "double_assignments": doubled[phase.name][:5], "stranded_orders": stranded[phase.name][:5]},
            # What the audit trail says of those orders, to tell why (seconds since the load started).
            "trails": {str(order_id): [(round(e["at"] - go_at, 2), e["event"], e["status"], e["driver_id"])
                                  for e in events.get(order_id, [])]
                       for order_id in {*lost[phase.name][:5], *stranded[phase.name][:5]}},
        })
    return {"phases": rows, "slow_offers": slow_offers(args.target_ms, go_at, tally, phases),
            "control_p99_ms": control_level, "_series": series, "_latencies": latencies,
            "_faults": [(inj.injected_at - go_at, inj.fault) for inj in injections], "_go_at": go_at}


def slow_offers(target_ms: float, go_at: float, tally, phases: list[Phase]) -> list[dict]:
    """Every order whose first offer came later than ``target_ms`` after its placement (``ms``; None: never), but
    for those held back on purpose, with why it waited as its cell saw it (the offer's ``waited_s``: seconds per
    reason)."""
    from dispatch.cell import DELIBERATE_WAITS

    latencies = chaos_audit.offer_latency_by_order(tally.placed_at, tally.first_offer, DELIBERATE_WAITS)
    slow = []
    for order_id, (placed, ms) in sorted(latencies.items(), key=lambda item: item[1]):
        if ms > target_ms:
            waited = tally.first_offer.get(order_id, (None, {}))[1]
            slow.append({"order_id": order_id, "placed_s": round(placed - go_at, 2),
                         "ms": None if ms == math.inf else ms,  # None: never offered
                         "phase": chaos_audit.phase_at(phases, placed),
                         "waited_s": {k: round(v, 2) for k, v in waited.items() if v}})
    return slow


def targets(table: dict, faults: list[str], recovery_target_s: float) -> list[dict]:
    """Per fault: 0 lost, 0 double, 0 stranded, recovery under the target; met is None when not measured."""
    checks = []
    rows = {row["fault"]: row for row in table["phases"] if row["fault"]}
    for fault in faults:
        row = rows.get(fault)
        if row is None or row["injection_error"]:
            checks.append({"fault": fault, "what": "injected", "met": False,
                           "figure": row["injection_error"] if row else "not reached"})
            continue
        for key in ("lost_orders", "lost_status_events", "double_assignments", "stranded_orders"):
            checks.append({"fault": fault, "what": key, "figure": row[key], "met": row[key] == 0})
        recovery = row["recovery_s"]
        checks.append({"fault": fault, "what": "recovery_s", "figure": recovery,
                       "met": recovery is not None and recovery < recovery_target_s})
    return checks


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if value == float("inf") else f"{value:,.{digits}f}"
    return f"{value:,}"


def markdown(figures: dict) -> str:
    config = figures["config"]
    lines = [
        "# hexdispatch bench chaos",
        "",
        f"{config['drivers']:,} drivers (GPS every {config['gps_interval']:g} s), {config['orders_per_minute']:g} "
        f"orders/min, {config['restaurants']} kitchens (prep {config['prep_minutes']} min) within "
        f"{config['radius_m']:g} m; `serve --workers {config['workers']}` over Redis, Ray head + "
        f"{config['ray_workers']} worker node, own Postgres; {config['window']:g} s per phase; stranded = no "
        f"event for {config['stall']:g} s at the end of the phase; recovery = first {config['recovery_window']:g} s "
        f"of placements after the fault with placement-to-offer p99 < {config['target_ms']:g} ms.",
        "",
        "| phase | at s | injection s | orders placed | lost orders | lost status events | double assignments "
        f"| stranded | re-dispatched | recovery s (p99 < {config['target_ms']:g} ms) | recovery s (p99 < "
        f"{CONTROL_SLACK:g} x control's p99 = {figures['chaos']['control_p99_ms']:,.0f} ms) | placement-to-offer p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def recovery(row: dict, key: str) -> str:
        if not row["fault"]:
            return "-"
        return "not in window" if row[key] is None else _num(row[key])

    for row in figures["chaos"]["phases"]:
        lines.append(f"| {row['phase']} | {_num(row['starts_s'], 0)} | {_num(row['injection_took_s'])} "
                     f"| {row['orders_placed']} | {row['lost_orders']} | {row['lost_status_events']} "
                     f"| {row['double_assignments']} | {row['stranded_orders']} | {row['redispatched_orders']} "
                     f"| {recovery(row, 'recovery_s')} | {recovery(row, 'recovery_to_control_s')} "
                     f"| {_num(row['placement_to_offer_p99_ms'])} |")
    run = figures["chaos"]
    lines += ["", f"Orders placed {run['orders_placed']}, refused {run['orders_refused']} (not acknowledged: not "
                  f"counted as lost), offered {run['offered_orders']}; driver job failures {run['driver_job_failures']}"
                  f", customer failures {run['customer_failures']}; drivers told of a job while busy, or two "
                  f"drivers delivering one order, as the driver clients saw it: {run['driver_double_bookings_seen']}"
                  f"; error frames to drivers: {run['driver_errors']}. Machine: CPU calibration "
                  f"{figures['environment'].get('calibration_ms')} ms, load average at start "
                  f"{figures['environment'].get('loadavg_at_start')}.", ""]
    for row in run["phases"]:
        if row["fault"]:
            lines.append(f"* {row['phase']}: {row['detail'] or row['injection_error']}"
                         f" (injection took {_num(row['injection_took_s'])} s)")
    slow = run.get("slow_offers", [])
    if slow:
        lines += ["", f"First offers later than {config['target_ms']:g} ms ({len(slow)}), with why the order waited "
                      "as its cell recorded it (seconds per reason):", ""]
        lines += [f"* order {o['order_id']} placed at {o['placed_s']:g} s ({o['phase']}): "
                  + ("never offered" if o["ms"] is None else f"{_num(o['ms'], 0)} ms") + "; "
                  + (", ".join(f"{k} {v:g} s" for k, v in sorted(o["waited_s"].items())) or "no wait recorded")
                  for o in slow[:40]]
    missed = [t for t in figures["targets"] if t["met"] is False]
    lines += ["", "Targets (0 lost, 0 double, 0 stranded, recovery < "
                  f"{TARGET_RECOVERY_S:g} s per fault): " + ("all met." if not missed else "missed: " + "; ".join(
                      f"{t['fault']} {t['what']} = {_num(t['figure'])}" for t in missed) + ".")]
    if figures.get("plots"):
        lines += ["", *(f"![{Path(p).stem}]({Path(p).name})" for p in figures["plots"])]
    if figures.get("errors"):
        lines += ["", "Errors:", "", "```", *figures["errors"], "```"]
    return "\n".join(lines) + "\n"


def plot(table: dict, target_ms: float, path: Path) -> str:
    """Placement-to-offer per order and its rolling p99 over the run, the faults marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    go_at = table["_go_at"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    finite = [(at - go_at, ms) for at, ms in table["_latencies"] if ms != float("inf")]
    never = [at - go_at for at, ms in table["_latencies"] if ms == float("inf")]
    if finite:
        ax.scatter(*zip(*finite), s=4, alpha=0.35, color="tab:gray", label="one order")
    series = [(t - go_at, min(v, 1e6)) for t, v in table["_series"]]
    if series:
        # No line across spans without placements (a window with too few orders is no reading).
        broken = [series[0]]
        for (t0, _), (t1, v1) in zip(series, series[1:]):
            if t1 - t0 > 2.0:
                broken.append((t0, float("nan")))
            broken.append((t1, v1))
        ax.plot(*zip(*broken), color="tab:blue", lw=1.4, label="rolling p99 (orders placed in the next window)")
    top = max([v for _, v in series] + [ms for _, ms in finite] + [target_ms * 10])
    if never:
        ax.scatter(never, [top] * len(never), marker="x", color="tab:red", s=18, label="never offered")
    ax.axhline(target_ms, color="tab:green", ls="--", lw=1, label=f"{target_ms:g} ms")
    for at, fault in table["_faults"]:
        ax.axvline(at, color="tab:red", lw=1)
        ax.annotate(fault, (at, top), rotation=90, va="top", ha="right", fontsize=8, color="tab:red")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the load started (placement time)")
    ax.set_ylabel("placement to first offer, ms")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    return save(fig, path)


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = parser_for("hexdispatch bench chaos", __doc__)
    add_city_arguments(parser, "the city (bench peak's load)", drivers=1000, orders_per_minute=200, drain_s=300,
                       processes=2, restaurants=100, radius_m=3000, prep_minutes="1")
    chaos = parser.add_argument_group("the faults")
    chaos.add_argument("--faults", default=",".join(FAULTS),
                       help=f"which faults, in order, comma-separated (of {', '.join(FAULTS)})")
    chaos.add_argument("--window", type=float, default=150,
                       help="seconds of the control phase and of each fault's phase (injection, then recovery)")
    chaos.add_argument("--stall", type=float, default=120,
                       help="an order still open at the end of a phase without an event for this long is stranded")
    chaos.add_argument("--recovery-window", type=float, default=10,
                       help="seconds of placements whose placement-to-offer p99 decides recovery")
    chaos.add_argument("--target-ms", type=float, default=100, help="placement-to-offer p99 that counts as recovered")
    chaos.add_argument("--workers", type=int, default=2, help="front-door processes (`serve --workers`)")
    chaos.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                       help="an environment variable for the server (repeatable)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "chaos", help="where the report goes")
    out.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    if unknown := set(args.faults) - set(FAULTS):
        parser.error(f"--faults: unknown {', '.join(sorted(unknown))}; known: {', '.join(FAULTS)}")
    if "front_door" in args.faults and args.workers < 2:
        parser.error("--faults front_door needs --workers 2 or more")
    if args.stall >= args.window:
        parser.error("--stall must be shorter than --window")
    if any("=" not in pair for pair in args.server_env):
        parser.error("--server-env takes KEY=VALUE")
    args.server_env = dict(pair.split("=", 1) for pair in args.server_env)
    args.processes = max(1, min(args.processes, args.drivers))
    args.ray_workers = 1 if "node" in args.faults else 0
    return args


def run(args, world) -> dict:
    """Seed, run the city through the control window and every fault's, drain, audit; the figures."""
    system = System([world.front_doors.url], world.secret, world.postgres.dsn,
                    {world.front_doors.process.pid: "front door"}, args.workers)
    kitchens = seed(args, system)
    schedule = FaultSchedule(world, args.faults, args.window)
    duration = args.window * (1 + len(args.faults))
    say(f"load: {args.drivers} drivers, {args.orders_per_minute:g} orders/min for {duration:g} s "
        f"(control, then {', '.join(args.faults)}), then a drain of up to {args.drain:g} s")
    try:
        city = run_city(args, system, kitchens, [Step(0.0, args.gps_interval, args.orders_per_minute)], duration,
                        "chaos", args.drain, every=schedule.tick, sample_every_s=1.0)
    finally:
        schedule.stop()
    load_end = city.go_at + duration
    say("auditing every acknowledged order against order_events ...")
    events = fetch_events(world.postgres.dsn, list(city.tally.placed_at))
    table = account(args, city.go_at, load_end, schedule.injections, city.tally, events)
    failures = [f for o in city.outcomes for f in o.failures]
    table.update({"orders_placed": len(city.tally.placed_at), "orders_refused": city.tally.refused_placements,
                  "offered_orders": len(city.tally.first_offer), "declined_offers": city.tally.declines,
                  "driver_job_failures": len(city.tally.job_failures), "customer_failures": len(failures),
                  "driver_errors": city.tally.driver_errors,
                  "failure_samples": (city.tally.job_failures + failures)[:10],
                  "lost_orders": sum(r["lost_orders"] for r in table["phases"]),
                  "lost_status_events": sum(r["lost_status_events"] for r in table["phases"]),
                  "double_assignments": sum(r["double_assignments"] for r in table["phases"]),
                  "driver_double_bookings_seen": city.tally.double_bookings})
    return table


def main(argv: list[str]) -> int:
    """Run the bench; print and write the table, the JSON and the plot; 1 if a target is missed."""
    from bench.chaos_env import chaos_world, use_cluster_auth
    from bench.machine import machine_facts

    args = parse_args(argv)
    use_cluster_auth()
    args.out.mkdir(parents=True, exist_ok=True)
    figures: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "environment": machine_facts()}
    started = time.time()
    try:
        with chaos_world(args.workers, args.ray_workers, with_redis=args.workers > 1 or "redis" in args.faults,
                         secret=secrets.token_urlsafe(48), server_env=args.server_env, logs=args.out / "logs",
                         say=say) as world:
            figures["environment"]["world"] = {"home": str(world.home), "ports": world.ports()}
            figures["chaos"] = run(args, world)
    except Exception:
        figures["errors"] = [traceback.format_exc()]
        say(f"the run failed:\n{figures['errors'][0]}")
    figures["elapsed_s"] = time.time() - started
    figures["targets"] = targets(figures["chaos"], args.faults, TARGET_RECOVERY_S) if "chaos" in figures else []
    if "chaos" in figures:
        figures["plots"] = [plot(figures["chaos"], args.target_ms, args.out / "chaos_latency.png")]
        report = markdown(figures)
        print()
        print(report)
        (args.out / "chaos.md").write_text(report)
    data = orjson.dumps(strip_private(figures), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    for path in [args.out / "chaos.json", *([args.json] if args.json else [])]:
        path.write_bytes(data)
    missed = [t for t in figures["targets"] if t["met"] is False]
    for target in missed:
        print(f"target missed: {target['fault']} {target['what']}: {target['figure']}", file=sys.stderr)
    return 1 if missed or "errors" in figures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
