"""The front door's memory while customer sockets stop reading (issue 13, item 4).

``python -m bench.stalled_reader [--sockets N] [--events-per-s R] [--seconds S] [--code DIR] [--json FILE]``

Starts ``hexdispatch serve`` on a fresh database of ``DATABASE_URL`` (the code of
this checkout, or of another one given by ``--code``, to compare before and
after), places one order for each of N customers, and follows each order on a
socket that reads its first event and then never reads again. Each order then
gets R status events a second (appended to ``order_events`` as the server's own
transitions are, each NOTIFYing the front door) for S seconds, while the
server's resident memory is sampled every second. Reports the memory at the
start, the end and its peak, and how many of the stalled sockets the server
closed (a closed socket's TCP connection is no longer established).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import psutil

from bench.catalog import fresh_database
from clients.http import ApiClient, wait_until_healthy
from clients.stallable import StallableCustomer
from server.auth import mint_token
from server.cli import parser_for

#: What a status event of these orders carries (a revised ready time, as a kitchen sends).
PAYLOAD = {"ready_at": "2026-01-01T12:30:00+00:00", "reason": "kitchen busy", "revised_by": "restaurant"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(dsn: str, secret: str, code: Path | None, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "REDIS_URL"}}
    env.update(DATABASE_URL=dsn, HEXDISPATCH_JWT_SECRET=secret, HEXDISPATCH_HOME=str(workdir / "home"))
    if code is not None:
        env["PYTHONPATH"] = str(code)
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=code or workdir, env=env, stdout=(workdir / "serve.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process, timeout_s=300)
    return process, url


async def seed(url: str, secret: str, sockets: int) -> list[tuple[str, int]]:
    """One restaurant, and one placed order per customer: [(customer id, order id)]."""
    now = int(time.time())
    owner = ApiClient(url, mint_token(secret, "restaurant", "r-stalled", now=now, ttl_s=3600))
    rest = await owner.create_restaurant(name="Stalled Kitchen", address="1 Test St", latitude=41.88,
                                         longitude=-87.63, prep_minutes=5)
    item = await owner.add_item(rest["id"], "Dish", 900)
    orders = []
    for i in range(sockets):
        customer = f"c-stalled-{i}"
        api = ApiClient(url, mint_token(secret, "customer", customer, now=now, ttl_s=3600))
        order = await api.place_order(rest["id"], [{"item_id": item["id"]}], (41.885, -87.63))
        orders.append((customer, order["id"]))
        await api.aclose()
    await owner.aclose()
    return orders


async def append_events(pool, order_ids: list[int], per_order: int) -> None:
    """``per_order`` more status events for each order, in one transaction per order."""
    for order_id in order_ids:
        await pool.execute(
            """WITH o AS (UPDATE orders SET version = version + $2 WHERE id = $1 RETURNING version, status)
               INSERT INTO order_events (order_id, seq, type, status, payload, actor)
               SELECT $1, o.version - $2 + g, 'revise_ready', o.status, $3::jsonb, 'bench'
               FROM o, generate_series(1, $2) AS g""",
            order_id, per_order, json.dumps(PAYLOAD))


async def measure(url: str, dsn: str, secret: str, pid: int, sockets: int, events_per_s: int,
                  seconds: float) -> dict:
    orders = await seed(url, secret, sockets)
    now = int(time.time())
    stalled = []
    for customer, order_id in orders:
        raw = await StallableCustomer.connect(url, mint_token(secret, "customer", customer, now=now, ttl_s=3600))
        await raw.send({"type": "subscribe", "order_id": order_id, "after_seq": 0})
        await raw.read_until(lambda raw=raw: 1 in raw.statuses())
        stalled.append(raw)  # from here on it never reads
    server = psutil.Process(pid)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    samples = []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            await append_events(pool, [order_id for _, order_id in orders], events_per_s)
            samples.append((round(elapsed, 1), server.memory_info().rss / 2**20,
                            sum(not raw.established() for raw in stalled)))
            await asyncio.sleep(max(0.0, started + len(samples) - time.monotonic()))
    finally:
        await pool.close()
        for raw in stalled:
            raw.close()
    rss = [mb for _, mb, _ in samples]
    return {
        "sockets": sockets, "events_per_s_per_socket": events_per_s, "seconds": seconds,
        "rss_mb_start": round(rss[0], 1), "rss_mb_end": round(rss[-1], 1), "rss_mb_peak": round(max(rss), 1),
        "sockets_closed_by_server": samples[-1][2],
        "first_close_after_s": next((t for t, _, closed in samples if closed), None),
        "samples": [{"t": t, "rss_mb": round(mb, 1), "closed": closed} for t, mb, closed in samples],
    }


def main(argv: list[str]) -> int:
    parser = parser_for("python -m bench.stalled_reader", __doc__)
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--events-per-s", type=int, default=20, help="status events per second per order")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--code", type=Path, help="another checkout to run the server from (before/after)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    admin = os.environ.get("DATABASE_URL")
    if not admin:
        parser.error("set DATABASE_URL to a Postgres where a scratch database may be created")
    secret = secrets.token_hex(16)
    with fresh_database(admin, keep=False) as dsn, tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(dsn, secret, args.code, Path(tmp))
        try:
            result = asyncio.run(measure(url, dsn, secret, process.pid, args.sockets, args.events_per_s,
                                         args.seconds))
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    result["code"] = str(args.code or "this checkout")
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
