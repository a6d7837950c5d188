"""``hexdispatch simulate``: a live simulated city against a running server.

Drivers (websocket clients) stream GPS while moving at road speed, accept most
offers, pick up when the food is ready and deliver. Kitchens (restaurant
accounts, over HTTP) accept, cook and mark orders ready. Customers place
orders at nearby restaurants and follow them on their own websockets.

Give ``--url`` several times to spread the city over several front doors:
driver and customer sockets and HTTP calls go to them round-robin, so a
customer usually follows a driver connected to another front door.

After the run it drains (drivers keep working until every placed order is
delivered or cancelled, or ``--drain`` runs out), then checks every
acknowledged order against the server's audit trail and prints a summary:
orders placed, delivered, cancelled, lost (acknowledged but missing, stuck, or
with status events the customer never received: must be 0), double
assignments (must be 0), placement-to-offer and GPS-to-customer latency.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid

import httpx

from clients.city import (
    DEFAULT_CENTER, Kitchen, OrderDesk, RoundRobin, SimDriver, Tally, audit, local_minter, percentiles, place_orders,
    random_point, seed_city, start_drivers,
)
from clients.http import ApiClient, ApiError
from server.cli import parser_for

DEFAULT_URL = "http://127.0.0.1:8000"


#: How long ``simulate`` waits for a front door's ``/v1/health`` before giving up on it.
HEALTH_TIMEOUT_S = 5.0


class CannotSimulate(Exception):
    """Why the simulation cannot start (no server, the server refuses our tokens): one line for the user."""


async def check_servers(urls: list[str], mint) -> None:
    """Each front door answers ``/v1/health`` within :data:`HEALTH_TIMEOUT_S` and takes our tokens; else
    :class:`CannotSimulate` saying which does not and why."""
    async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S) as http:
        for url in urls:
            try:
                health = await http.get(f"{url}/v1/health")
            except httpx.HTTPError as exc:
                raise CannotSimulate(f"no hexdispatch server answers at {url} ({type(exc).__name__}): start one "
                                     "with `hexdispatch serve`, or give its address with --url") from None
            if health.status_code != 200:
                raise CannotSimulate(f"{url}/v1/health answered {health.status_code}: the server is not ready")
            mine = await http.get(f"{url}/v1/orders", params={"limit": 1},
                                  headers={"authorization": f"Bearer {mint('admin', 'sim-check')}"})
            if mine.status_code == 401:
                raise CannotSimulate(f"{url} refuses our tokens (401): they are signed with another secret than "
                                     "the server's; run simulate from the server's directory, or set "
                                     "HEXDISPATCH_HOME or HEXDISPATCH_JWT_SECRET to the server's")


async def run(args) -> dict:
    urls = RoundRobin(args.urls or [DEFAULT_URL])
    mint, secret_source = local_minter()
    print(f"signing tokens with {secret_source}", flush=True)
    await check_servers(urls.urls, mint)
    rng = random.Random(args.seed)
    center = (args.lat, args.lng)
    tally = Tally()
    print(f"seeding {args.restaurants} restaurants around {center} on {len(urls.urls)} front door(s) ...", flush=True)
    kitchens = await seed_city(urls, mint, rng, center, args.radius_m, args.restaurants, [args.prep_minutes])
    drivers = [
        SimDriver(urls.next(), mint("driver", f"sim-driver-{i}-{uuid.uuid4().hex[:6]}"), f"sim-driver-{i}",
                  random_point(rng, center, args.radius_m), rng, tally, args.speed_kmh / 3.6, args.gps_interval,
                  args.accept_rate)
        for i in range(args.drivers)
    ]
    print(f"connecting {len(drivers)} drivers ...", flush=True)
    await start_drivers(drivers)
    desk = OrderDesk(urls, mint, kitchens, rng, center, args.radius_m, tally)

    started = time.time()
    next_report = [started + 10]

    def report() -> None:
        if time.time() >= next_report[0]:
            next_report[0] += 10
            print(f"  t={time.time() - started:5.0f}s placed={len(tally.placed_at)} open={desk.open_orders()}",
                  flush=True)

    print(f"running for {args.duration:.0f} s at {args.orders_per_minute} orders/min ...", flush=True)
    await place_orders(desk, args.orders_per_minute, args.duration, rng, tick=report)
    print(f"draining (up to {args.drain:.0f} s) ...", flush=True)
    drain_until = time.time() + args.drain
    while time.time() < drain_until and (desk.open_orders() or any(not t.done() for t in desk.tasks)):
        await asyncio.sleep(1)
        report()
    await asyncio.sleep(2)  # let the last status events reach the customers

    await desk.close()
    for driver in drivers:
        await driver.stop()
    admin = ApiClient(urls.next(), mint("admin", "sim-auditor"))
    counts = await audit(admin, list(tally.placed_at), tally.seen_seqs, tally.followed_until)
    await admin.aclose()
    cleanup = await remove_kitchens(kitchens) if args.cleanup else {}
    return {
        "urls": urls.urls,
        "drivers": args.drivers, "orders_per_minute": args.orders_per_minute, "duration_s": args.duration,
        "orders_placed": len(tally.placed_at), "orders_refused": tally.refused_placements,
        "delivered": counts["delivered"], "cancelled": counts["cancelled"], "in_flight": counts["in_flight"],
        "lost": counts["lost"], "lost_status_events": counts["lost_status_events"],
        "double_assignments": counts["double_assigned"] + tally.double_bookings,
        "declined_offers": tally.declines,
        "driver_errors": tally.driver_errors,
        "driver_job_failures": len(tally.job_failures),
        "kitchen_ready_after_pickup": tally.ready_after_pickup,
        "placement_to_offer_ms": percentiles(tally.placement_to_offer_ms()),
        "delivery_promise_min": counts["promise"],
        "gps_to_customer_ms": percentiles(ms for _, ms in tally.gps_to_customer),
        **cleanup,
    }


async def remove_kitchens(kitchens: list[Kitchen]) -> dict:
    """``--cleanup``: delete the run's "Sim Kitchen" restaurants with their menus, orders and audit trails (each
    by its own account); a kitchen with an order still in flight is kept. Returns the summary's counts."""
    removed, kept = 0, 0
    for kitchen in kitchens:
        owner = ApiClient(kitchen.url, kitchen.owner_token)
        try:
            await owner.erase_restaurant(kitchen.id)
            removed += 1
        except ApiError as exc:
            if exc.code != "active_orders":
                raise
            kept += 1
        finally:
            await owner.aclose()
    return {"kitchens_removed": removed, "kitchens_kept_with_active_orders": kept}


#: What the summary's less obvious lines mean, printed under it.
SUMMARY_NOTES = {
    "orders_refused": "placements the server refused (4xx/5xx) or that got no answer",
    "lost": "acknowledged orders missing, not delivered or cancelled, or with status events their customer "
            "never got: must be 0",
    "double_assignments": "orders held by two drivers at once: must be 0",
    "declined_offers": "offers the simulated drivers turned down on purpose (--accept-rate), offered again",
    "driver_errors": "error frames the drivers' sockets received, by code",
    "kitchen_ready_after_pickup": "kitchens' 'ready' clicks answered 409 because the driver had already picked "
                                  "the food up (a pickup marks it ready): expected, harmless",
    "kitchens_kept_with_active_orders": "--cleanup left these restaurants: an order of theirs was still in flight",
    "placement_to_offer_ms": "an order placed to its first offer to a driver",
    "delivery_promise_min": "the drop-off promised at placement against the delivery, delivered orders: mean and "
                            "p90 absolute error, share within 5 min, bias (promised minus actual), share inside "
                            "the promised range",
    "gps_to_customer_ms": "a driver's GPS fix to the customer following the order",
}


def print_summary(summary: dict) -> None:
    print("\nsimulation summary")
    for key, value in summary.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        print(f"  {key:26s} {value}")
    print()
    for key, note in SUMMARY_NOTES.items():
        if key in summary:
            print(f"  {key}: {note}")


def main(argv: list[str]) -> int:
    parser = parser_for("hexdispatch simulate", __doc__)
    parser.add_argument("--url", "--server", dest="urls", action="append", metavar="URL",
                        help=f"a front door's base URL; repeat for several (default {DEFAULT_URL})")
    parser.add_argument("--drivers", type=int, default=50, help="simulated drivers, each on its own websocket")
    parser.add_argument("--orders-per-minute", type=float, default=30, help="order arrival rate (Poisson)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of order placement")
    parser.add_argument("--drain", type=float, default=300, help="seconds to let open orders finish")
    parser.add_argument("--restaurants", type=int, default=20, help='"Sim Kitchen" restaurants to onboard')
    parser.add_argument("--prep-minutes", type=int, default=1, help="the kitchens' preparation time")
    parser.add_argument("--radius-m", type=float, default=1500, help="size of the simulated city")
    parser.add_argument("--speed-kmh", type=float, default=36, help="drivers' road speed")
    parser.add_argument("--gps-interval", type=float, default=5.0, help="seconds between a driver's fixes")
    parser.add_argument("--accept-rate", type=float, default=0.9, help="share of offers drivers accept")
    parser.add_argument("--lat", type=float, default=DEFAULT_CENTER[0], help="latitude of the city's centre")
    parser.add_argument("--lng", type=float, default=DEFAULT_CENTER[1], help="longitude of the city's centre")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the city")
    parser.add_argument("--json", help="also write the summary to this file")
    parser.add_argument("--cleanup", action="store_true",
                        help='afterwards delete the run\'s "Sim Kitchen" restaurants, their menus, orders and audit '
                             "trails (kitchens with an order still in flight are kept)")
    args = parser.parse_args(argv)
    try:
        summary = asyncio.run(run(args))
    except CannotSimulate as exc:
        print(f"hexdispatch simulate: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:  # the server went away or stopped answering mid-run
        print(f"hexdispatch simulate: the server stopped answering ({type(exc).__name__}: {exc or 'no answer'})",
              file=sys.stderr)
        return 2
    print_summary(summary)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    return 0 if summary["lost"] == 0 and summary["double_assignments"] == 0 else 1
