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

import argparse
import asyncio
import json
import random
import time
import uuid

from clients.city import (
    DEFAULT_CENTER, OrderDesk, RoundRobin, SimDriver, Tally, audit, local_minter, percentiles, place_orders,
    random_point, seed_city, start_drivers,
)
from clients.http import ApiClient
from server.cli import parser_for

DEFAULT_URL = "http://127.0.0.1:8000"


async def run(args) -> dict:
    urls = RoundRobin(args.urls or [DEFAULT_URL])
    mint = local_minter()
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
        "placement_to_offer_ms": percentiles(tally.placement_to_offer_ms()),
        "gps_to_customer_ms": percentiles(ms for _, ms in tally.gps_to_customer),
    }


def print_summary(summary: dict) -> None:
    print("\nsimulation summary")
    for key, value in summary.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        print(f"  {key:24s} {value}")


def main(argv: list[str]) -> int:
    parser = parser_for("hexdispatch simulate", __doc__)
    parser.add_argument("--url", "--server", dest="urls", action="append", metavar="URL",
                        help=f"a front door's base URL; repeat for several (default {DEFAULT_URL})")
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
