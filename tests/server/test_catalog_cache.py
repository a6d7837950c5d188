"""Per-process catalog caches: the menu cache, the nearby replica, and how fresh they stay."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
import uuid

import numpy as np
import orjson

from dispatch.cells import cell_of
from dispatch.jit import load_twin
from server import nearby_kernel
from server.catalog_cache import CachedMenu, MenuCache
from server.catalog_replica import OpenClock, box_key_ranges, grid_key
from store import catalog
from tests.server.helpers import add_item, make_restaurant, place
from tests.waiting import eventually

# A private patch of ocean so other tests' restaurants never show up in these searches.
ORIGIN = (-40.0 + random.uniform(-3, 3), 60.0 + random.uniform(-3, 3))


class Clock:
    """A clock the test moves by hand (monotonic and wall time together)."""

    def __init__(self, wall: float = 1_000_000.0):
        self.now = 0.0
        self.wall0 = wall

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall0 + self.now


def cache(clock: Clock, **kw) -> MenuCache:
    menus = MenuCache(clock=clock.monotonic, wall=clock.wall, **kw)
    menus.enable(True)
    return menus


def loader(body: bytes, calls: list, time_dependent: bool = False):
    async def load():
        calls.append(body)
        return CachedMenu(body, time_dependent)

    return load


# --------------------------------------------------------------------------- menu cache (unit)


async def test_menu_cache_hits_until_ttl():
    clock, calls = Clock(), []
    menus = cache(clock, ttl_s=5.0)
    assert await menus.get(1, loader(b"v1", calls)) == b"v1"
    clock.now = 4.9
    assert await menus.get(1, loader(b"v2", calls)) == b"v1"
    clock.now = 5.0  # the TTL bounds staleness even if no notification ever came
    assert await menus.get(1, loader(b"v2", calls)) == b"v2"
    assert calls == [b"v1", b"v2"] and menus.hits == 1 and menus.misses == 2


async def test_menu_with_opening_hours_expires_at_the_next_minute():
    clock, calls = Clock(wall=600.0 + 50.0), []  # 10 s before a minute boundary
    menus = cache(clock, ttl_s=30.0)
    await menus.get(1, loader(b"hours", calls, time_dependent=True))
    await menus.get(2, loader(b"always", calls))
    clock.now = 9.9
    assert await menus.get(1, loader(b"x", calls)) == b"hours"
    clock.now = 10.0
    assert await menus.get(1, loader(b"next minute", calls)) == b"next minute"
    assert await menus.get(2, loader(b"x", calls)) == b"always"


async def test_menu_cache_invalidate_and_lru_bytes():
    clock, calls = Clock(), []
    menus = cache(clock, max_bytes=3 * (100 + 200))
    for key in (1, 2, 3):
        await menus.get(key, loader(bytes(100), calls))
    await menus.get(1, loader(b"", calls))  # 1 is now the most recently used
    await menus.get(4, loader(bytes(100), calls))  # evicts 2, the least recently used
    assert sorted(menus._entries) == [1, 3, 4] and menus.size_bytes <= menus.max_bytes
    menus.invalidate(3)
    assert await menus.get(3, loader(b"fresh", calls)) == b"fresh"


async def test_a_load_overlapping_an_invalidation_is_served_but_not_stored():
    clock, calls = Clock(), []
    menus = cache(clock)
    gate = asyncio.Event()

    async def slow_load():
        await gate.wait()
        return CachedMenu(b"read before the change", False)

    pending = asyncio.create_task(menus.get(7, slow_load))
    await asyncio.sleep(0)
    menus.invalidate(7)  # the change's notification arrives while the old state is being read
    gate.set()
    assert await pending == b"read before the change"
    assert await menus.get(7, loader(b"after", calls)) == b"after"

    gate.clear()
    pending = asyncio.create_task(menus.get(8, slow_load))
    await asyncio.sleep(0)
    menus.clear()
    gate.set()
    await pending
    assert 8 not in menus._entries


async def test_disabled_menu_cache_always_loads():
    clock, calls = Clock(), []
    menus = MenuCache(clock=clock.monotonic, wall=clock.wall)
    await menus.get(1, loader(b"a", calls))
    await menus.get(1, loader(b"b", calls))
    assert calls == [b"a", b"b"] and len(menus) == 0


# --------------------------------------------------------------------------- menu cache (through the API)


async def test_menu_is_cached_and_invalidated_by_writes(app, as_role, pool):
    owner, customer = as_role("restaurant"), as_role("customer")
    menus = app.state.catalog.menus
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"], "Soup", 500)
    url = f"/v1/restaurants/{rest['id']}/menu"
    first = await customer.get(url)

    async def served_from_cache():  # once the notifications of the writes above have come by
        hits = menus.hits
        return (await customer.get(url)).content == first.content and menus.hits == hits + 1

    await eventually(served_from_cache)

    # A write through this process shows at once.
    await owner.patch(f"/v1/restaurants/{rest['id']}/menu/items/{item['id']}", json={"price_cents": 650})
    assert (await customer.get(url)).json()["items"][0]["price_cents"] == 650
    await owner.patch(f"/v1/restaurants/{rest['id']}", json={"prep_minutes": 33})
    assert (await customer.get(url)).json()["status"]["prep_minutes"] == 33

    # A write behind this process's back (another server, a script) shows once its notification arrives.
    await customer.get(url)
    async with pool.acquire() as conn:
        await conn.execute("UPDATE menu_items SET name = 'Stew' WHERE id = $1", item["id"])

    async def renamed():
        return (await customer.get(url)).json()["items"][0]["name"] == "Stew"

    # The menu was cached just before the change: showing within half its TTL, it came by notification.
    await eventually(renamed, timeout_s=menus.ttl_s / 2)


async def test_menu_active_orders_follow_placed_orders(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    rest = await make_restaurant(owner)
    item = await add_item(owner, rest["id"])
    url = f"/v1/restaurants/{rest['id']}/menu"
    assert (await customer.get(url)).json()["status"]["active_orders"] == 0
    r = await place(customer, rest["id"], [{"item_id": item["id"]}])
    assert r.status_code == 201, r.text

    async def counted():
        return (await customer.get(url)).json()["status"]["active_orders"] == 1

    await eventually(counted)
    r = await customer.post(f"/v1/orders/{r.json()['id']}/cancel", json={})
    assert r.status_code == 200, r.text

    async def uncounted():
        return (await customer.get(url)).json()["status"]["active_orders"] == 0

    await eventually(uncounted)


async def test_menu_open_now_is_computed_per_minute(as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    now = dt.datetime.now(dt.timezone.utc)
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[now.weekday()]
    other = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(now.weekday() + 3) % 7]
    closed = await make_restaurant(owner, opening_hours={other: [["00:00", "24:00"]]})
    open_ = await make_restaurant(owner, opening_hours={day: [["00:00", "24:00"]]})
    for rest, expected in ((closed, False), (open_, True)):
        for _ in range(2):  # cached or not, the same answer
            menu = (await customer.get(f"/v1/restaurants/{rest['id']}/menu")).json()
            assert menu["status"]["open_now"] is expected and menu["restaurant"]["open_now"] is expected


# --------------------------------------------------------------------------- losing the notifications


async def test_losing_the_listener_falls_back_to_sql_then_recovers(app, as_role, pool):
    owner, customer = as_role("restaurant"), as_role("customer")
    cache_ = app.state.catalog
    rest = await make_restaurant(owner, latitude=ORIGIN[0] - 0.4, longitude=ORIGIN[1] - 0.4)
    url = f"/v1/restaurants/{rest['id']}/menu"
    await customer.get(url)
    listener_pid = cache_._listener.get_server_pid()
    # The listener's reconnections fail until the end of the outage (a port nobody listens on), so the deaf
    # spell lasts as long as the test needs rather than the few milliseconds a reconnection takes.
    reachable, cache_.listener.dsn = cache_.listener.dsn, "postgresql://postgres@127.0.0.1:1/unreachable"
    failures = cache_.listener.failed_attempts
    try:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_terminate_backend($1)", listener_pid)

        async def lost():
            return not cache_.connected and cache_.listener.failed_attempts > failures

        await eventually(lost)
        assert not cache_.menus.enabled and not cache_.replica.ready and len(cache_.menus) == 0
        async with pool.acquire() as conn:  # a change nobody is told about
            await conn.execute("UPDATE restaurants SET name = 'Renamed while deaf' WHERE id = $1", rest["id"])
        # Meanwhile every read goes to Postgres: never stale.
        assert (await customer.get(url)).json()["restaurant"]["name"] == "Renamed while deaf"
        near = await customer.get("/v1/restaurants/nearby", params={"lat": rest["location"]["lat"],
                                                                    "lng": rest["location"]["lng"], "radius_m": 100})
        assert [x["name"] for x in near.json()["items"]] == ["Renamed while deaf"]
    finally:
        cache_.listener.dsn = reachable

    async def recovered():
        return cache_.connected and cache_.replica.ready

    await eventually(recovered)
    near = await customer.get("/v1/restaurants/nearby", params={"lat": rest["location"]["lat"],
                                                                "lng": rest["location"]["lng"], "radius_m": 100})
    assert [x["name"] for x in near.json()["items"]] == ["Renamed while deaf"]  # reloaded from scratch


# --------------------------------------------------------------------------- the nearby replica


def test_kernel_matches_its_twin_and_postgres_formula():
    twin = load_twin(nearby_kernel)
    rng = np.random.default_rng(3)
    n = 2000
    lat, lng = rng.uniform(-60, 60, n), rng.uniform(-179, 179, n)
    radius = rng.choice([500.0, 3000.0, 1e7], n)
    ids = np.arange(1, n + 1, dtype=np.int64)
    order = np.arange(n, dtype=np.int64)
    for q_lat, q_lng in rng.uniform(-50, 50, (5, 2)):
        outs = []
        for module in (nearby_kernel, twin):
            slots, d = nearby_kernel.empty_outputs(n)
            k = module.scan(np.array([0]), np.array([n]), order, lat, lng, radius, ids, q_lat, q_lng, 5e6,
                            True, 1e6, 7, 2.0, slots, d)
            outs.append((slots[:k].copy(), d[:k].copy()))
        assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
        assert len(outs[0][0]) > 0


async def test_kernel_distances_equal_postgres(pool):
    rng = np.random.default_rng(4)
    lat, lng = rng.uniform(-60, 60, 500), rng.uniform(-179, 179, 500)
    q_lat, q_lng = 41.88, -87.63
    sql = catalog.DISTANCE_SQL.replace("r.latitude", "p.lat").replace("r.longitude", "p.lng")
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {sql} AS d FROM unnest($3::float8[], $4::float8[]) WITH ORDINALITY AS p(lat, lng, i) ORDER BY i",
            q_lat, q_lng, lat.tolist(), lng.tolist())
    ours = [nearby_kernel.distance_m(q_lat, q_lng, math.cos(q_lat * nearby_kernel.RADIANS_PER_DEGREE), a, b, 2.0)
            for a, b in zip(lat, lng)]
    assert [r["d"] for r in rows] == ours


def test_box_ranges_cover_the_antimeridian_and_poles():
    rng = np.random.default_rng(5)
    for q_lat, q_lng, radius in ((10.0, 179.999, 5000.0), (-20.0, -179.99, 20000.0), (89.99, 30.0, 3000.0),
                                 (-89.95, 0.0, 8000.0), (0.0, 0.0, 50000.0)):
        lat = np.clip(q_lat + rng.uniform(-1, 1, 20000) * radius / 111000 * 1.5, -90, 90)
        lng = (q_lng + rng.uniform(-1, 1, 20000) * 180 + 180) % 360 - 180
        if abs(q_lat) < 80:
            lng = ((q_lng + rng.uniform(-1, 1, 20000) * radius / 111000 * 1.5 / math.cos(math.radians(q_lat)))
                   + 180) % 360 - 180
        keys = grid_key(lat, lng)
        lows, highs = box_key_ranges(q_lat, q_lng, radius)
        covered = np.zeros(len(keys), bool)
        for lo, hi in zip(lows, highs):
            covered |= (keys >= lo) & (keys <= hi)
        cos_q = math.cos(q_lat * nearby_kernel.RADIANS_PER_DEGREE)
        within = np.array([nearby_kernel.distance_m(q_lat, q_lng, cos_q, a, b, 2.0) <= radius for a, b in zip(lat, lng)])
        assert within.sum() > 10
        assert not (within & ~covered).any(), (q_lat, q_lng, radius)


async def test_open_clock_agrees_with_sql(pool):
    hours = [None, {}, {"mon": [["09:00", "17:00"]]}, {"tue": [["00:00", "02:30"], ["18:00", "24:00"]]},
             {"sun": [["23:59", "24:00"]], "mon": [["00:00", "00:01"]]}]
    zones = ["UTC", "America/Chicago", "Asia/Kolkata", "Pacific/Chatham"]
    instants = [dt.datetime(2026, 3, 8, 7, 59, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=37 * k) for k in range(90)]
    cases = [(o, h, z, at) for o in (True, False) for h in hours for z in zones for at in instants[::7]]
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT restaurant_open_at(c.o, c.h::jsonb, c.z, c.at) AS open
               FROM unnest($1::bool[], $2::text[], $3::text[], $4::timestamptz[]) WITH ORDINALITY AS c(o, h, z, at, i)
               ORDER BY c.i""",
            [c[0] for c in cases], [None if c[1] is None else orjson.dumps(c[1]).decode() for c in cases],
            [c[2] for c in cases], [c[3] for c in cases])
    ours = [OpenClock(at).is_open(o, h, z) for o, h, z, at in cases]
    assert ours == [r["open"] for r in rows]
    assert any(ours) and not all(ours)


async def test_replica_answers_byte_for_byte_like_sql(app, as_role):
    owner, customer = as_role("restaurant"), as_role("customer")
    replica = app.state.catalog.replica
    rng = random.Random(11)
    tag = "r" + uuid.uuid4().hex[:8]
    now = dt.datetime.now(dt.timezone.utc)
    today = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[now.weekday()]
    other = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(now.weekday() + 3) % 7]
    base = (ORIGIN[0] + 0.5, ORIGIN[1] + 0.5)
    for i in range(60):
        hours = rng.choice([None, {today: [["00:00", "24:00"]]}, {other: [["10:00", "20:00"]]}])
        await make_restaurant(
            owner, name=f"R{i} {rng.choice(['Sushi', 'Deli'])}", latitude=base[0] + rng.uniform(-0.03, 0.03),
            longitude=base[1] + rng.uniform(-0.03, 0.03), delivery_radius_m=rng.choice([800, 2000, 6000]),
            cuisine_tags=[tag] + (["vegan"] if i % 3 == 0 else []), opening_hours=hours,
            timezone=rng.choice(["UTC", "Asia/Tokyo"]), is_open=i % 7 != 0)
    assert replica.ready

    async def pages(params, use_replica: bool) -> list[bytes]:
        replica.ready = use_replica
        try:
            out, cursor = [], None
            while True:
                query = dict(params, **({"cursor": cursor} if cursor else {}))
                r = await customer.get("/v1/restaurants/nearby", params=query)
                assert r.status_code == 200, r.text
                out.append(r.content)
                cursor = r.json()["next_cursor"]
                if cursor is None or len(out) > 30:
                    return out
        finally:
            replica.ready = True

    shown = 0
    for k in range(12):
        params = {"lat": base[0] + rng.uniform(-0.02, 0.02), "lng": base[1] + rng.uniform(-0.02, 0.02),
                  "radius_m": rng.choice([300, 1500, 5000]), "limit": rng.choice([1, 3, 7, 20]), "cuisine": tag}
        if k % 3 == 1:
            params["cuisine"] = "vegan"
        if k % 2 == 0:
            params["open_now"] = "true"
        from_sql, from_replica = await pages(params, False), await pages(params, True)
        assert from_replica == from_sql, params
        shown += sum(len(orjson.loads(p)["items"]) for p in from_sql)
    assert shown > 50


async def test_replica_sees_changes_made_behind_its_back(app, as_role, pool):
    owner, customer = as_role("restaurant"), as_role("customer")
    replica = app.state.catalog.replica
    spot = (ORIGIN[0] - 0.8, ORIGIN[1] + 0.8)
    rest = await make_restaurant(owner, latitude=spot[0], longitude=spot[1])

    async def names():
        r = await customer.get("/v1/restaurants/nearby", params={"lat": spot[0], "lng": spot[1], "radius_m": 2000})
        return [x["name"] for x in r.json()["items"]]

    assert replica.ready and await names() == [rest["name"]]  # this process's own write: at once
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE restaurants SET name = 'Moved in', latitude = $2, longitude = $3, h3_cell = $4 WHERE id = $1",
            rest["id"], spot[0] + 0.001, spot[1], cell_of(spot[0] + 0.001, spot[1]))
        other = await conn.fetchval(
            """INSERT INTO restaurants (owner_sub, name, address, latitude, longitude, h3_cell, prep_minutes,
                                        delivery_radius_m, delivery_fee_cents)
               VALUES ('x', 'Inserted by SQL', 'a', $1, $2, $3, 10, 5000, 0) RETURNING id""",
            spot[0], spot[1], cell_of(*spot))

    async def both():
        return sorted(await names()) == ["Inserted by SQL", "Moved in"]

    await eventually(both)
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM restaurants WHERE id = $1", other)

    async def gone():
        return await names() == ["Moved in"]

    await eventually(gone)
