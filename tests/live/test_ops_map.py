"""The live ops map (``/ops``): its admin-only feed, and the page in a real headless Chromium on a simulated city.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); without them
it is skipped, except under CI, where it fails. It saves a screenshot in ``$HEXDISPATCH_ARTIFACTS`` (default
``tests/artifacts/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
import uuid
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from clients.city import OrderDesk, RoundRobin, SimDriver, Tally, minter, random_point, seed_city, start_drivers
from tests.conftest import TEST_SECRET, token
from tests.waiting import DEADLINE_S, eventually

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("HEXDISPATCH_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
CITY_RADIUS_M = 2500.0


def ws_url(live, query: str) -> str:
    return live.url.replace("http://", "ws://") + "/v1/ws/ops?" + query


async def next_of(socket, kind: str) -> dict:
    while True:
        message = orjson.loads(await asyncio.wait_for(socket.recv(), DEADLINE_S))
        if message["type"] == kind:
            return message


async def test_the_ops_feed_is_for_admins_only(live, served):
    for role in ("customer", "driver", "restaurant"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(live, f"token={token(role, 'x')}")):
                pass
        assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(live, "token=not-a-token")):
            pass
    assert refused.value.response.status_code == 401


async def test_the_ops_feed_streams_cells_and_drivers_in_the_viewport(live, served, spot):
    from clients.driver import DriverClient

    lat, lng = spot
    driver_id = f"d-{uuid.uuid4().hex[:8]}"
    async with DriverClient(live.url, token("driver", driver_id)) as driver, \
            connect(ws_url(live, f"token={token('admin', 'ops')}")) as socket:
        assert (await next_of(socket, "welcome"))["interval_s"] > 0

        async def driver_on_the_map():
            await driver.gps(lat + 0.001, lng)
            frame = await next_of(socket, "frame")
            return frame if any(d[0] == driver_id for d in frame["drivers"]) else None

        frame = await eventually(driver_on_the_map, what="the driver in a frame")
        [row] = [d for d in frame["drivers"] if d[0] == driver_id]
        assert row[1:] == [pytest.approx(lat + 0.001), pytest.approx(lng), "idle"]
        cell = next(c for c in frame["cells"] if c["idle_drivers"] >= 1)
        assert len(cell["boundary"]) == 6
        # Looking elsewhere: the driver is no longer sent, its cell still is.
        await socket.send(orjson.dumps({"type": "viewport", "south": lat + 1, "west": lng, "north": lat + 2,
                                        "east": lng + 1}).decode())

        async def driver_out_of_view():
            frame = await next_of(socket, "frame")
            return frame if not any(d[0] == driver_id for d in frame["drivers"]) else None

        frame = await eventually(driver_out_of_view, what="a frame of the other viewport")
        assert any(c["cell"] == cell["cell"] for c in frame["cells"])
        await socket.send('{"type": "viewport", "south": 5, "west": 0, "north": 1, "east": 1}')
        error = await next_of(socket, "error")
        assert error["code"] == "invalid_message"


async def test_viewers_share_one_round_of_cell_calls_which_stops_with_the_last_viewer(live, served):
    feed = live.app.state.ops_feed
    url = ws_url(live, f"token={token('admin', 'ops')}")
    async with connect(url) as first, connect(url) as second:
        await next_of(first, "frame")
        await next_of(second, "frame")
        rounds, frames = feed.rounds, feed.frames_sent
        await eventually(lambda: feed.rounds - rounds >= 3, what="three more rounds")
        assert feed.running
        # One round of cell calls a frame to each viewer (not a round per viewer).
        assert feed.frames_sent - frames == 2 * (feed.rounds - rounds)
    await eventually(lambda: not feed.running, what="the rounds stopping with the last viewer")
    stopped_at = feed.rounds
    async with connect(url) as again:
        await next_of(again, "frame")
    assert feed.rounds > stopped_at


def chromium():
    """A headless Chromium through Debian's chromium-driver."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        message = "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,900", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@contextlib.asynccontextmanager
async def simulated_city(live, center, drivers: int, orders: int):
    """Kitchens, drivers driving about, and customers ordering, around ``center`` (``clients.city``)."""
    urls, mint, rng, tally = RoundRobin([live.url]), minter(TEST_SECRET), random.Random(15), Tally()
    kitchens = await seed_city(urls, mint, rng, center, CITY_RADIUS_M, 6, [1])
    fleet = [SimDriver(live.url, mint("driver", f"ops-driver-{i}-{uuid.uuid4().hex[:6]}"), f"ops-driver-{i}",
                       random_point(rng, center, CITY_RADIUS_M), rng, tally, 10.0, 1.0, 1.0) for i in range(drivers)]
    await start_drivers(fleet, chunk=10)
    desk = OrderDesk(urls, mint, kitchens, rng, center, CITY_RADIUS_M, tally)
    for _ in range(orders):
        desk.place_soon()
    try:
        yield desk
    finally:
        await desk.close(graceful=False)
        await asyncio.gather(*(driver.stop(graceful=False) for driver in fleet), return_exceptions=True)


async def drawn(browser) -> dict:
    """What the page says it drew (``data-*`` of its body). WebDriver calls block: they run in a thread, so
    the server in this event loop keeps serving meanwhile."""
    return await asyncio.to_thread(browser.execute_script,
        "const d = document.body.dataset; return {state: d.state, frames: +d.frames, hexes: +d.hexesDrawn,"
        " drivers: +d.driversDrawn, orders: +d.ordersDrawn, jobs: +d.jobsDrawn};")


async def page_shows(browser, condition, what: str) -> dict:
    async def check():
        seen = await drawn(browser)
        return seen if condition(seen) else None

    return await eventually(check, interval_s=0.5, what=what)


async def test_the_ops_map_shows_the_simulated_city_in_chromium(live):
    browser = await asyncio.to_thread(chromium)
    center = (random.uniform(-40, 40), random.uniform(-150, 150))
    try:
        async with simulated_city(live, center, drivers=30, orders=8):
            # Without a token the page asks for one, and a token without the admin role is refused.
            await asyncio.to_thread(browser.get, f"{live.url}/ops")
            await page_shows(browser, lambda d: d["state"] == "needs-token", "the token prompt")
            await asyncio.to_thread(browser.get, f"{live.url}/ops?token={token('customer', 'nosy')}")
            await page_shows(browser, lambda d: d["state"] == "needs-token", "a customer's token refused")

            await asyncio.to_thread(browser.get, f"{live.url}/ops?token={token('admin', 'ops')}")
            assert "token=" not in browser.current_url  # taken out of the address bar
            started = time.monotonic()
            seen = await page_shows(
                browser, lambda d: d["state"] == "live" and d["hexes"] > 0 and d["drivers"] >= 10 and d["jobs"] > 0,
                "the city's cells, drivers and jobs drawn")
            await page_shows(browser, lambda d: d["frames"] >= seen["frames"] + 2, "frames keep coming")
            panel, cells = await asyncio.to_thread(browser.execute_script,
                "return [document.querySelectorAll('#cells .cell').length, window.opsMap.frame.cells.length]")
            assert panel == cells >= 1  # one panel per cell
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "ops-map.png"
            await asyncio.to_thread(browser.save_screenshot, str(shot))
            assert shot.stat().st_size > 10_000
            errors = [entry["message"] for entry in await asyncio.to_thread(browser.get_log, "browser")
                      if "/v1/ws/ops" not in entry["message"]]  # the refused customer's handshake is logged
            assert not errors, errors
            print(f"ops map drawn {time.monotonic() - started:.1f} s after loading: {seen}; screenshot {shot}")
    finally:
        await asyncio.to_thread(browser.quit)


async def test_the_page_and_its_assets_come_from_the_package(live):
    import httpx

    async with httpx.AsyncClient(base_url=live.url, timeout=DEADLINE_S) as http:
        page = await http.get("/ops")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for asset in ("/ops/static/ops.js", "/ops/static/ops.css"):
            assert asset in page.text
            assert (await http.get(asset)).status_code == 200
        assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
        assert (await http.get("/ops/static/..%2Fopsmap.py")).status_code == 404
