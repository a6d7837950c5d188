"""``/metrics`` of a real front door (issue 15, item 3), parsed with Prometheus' own text parser, and the
Grafana dashboard in ``ops/grafana`` queries only metrics that are exported."""

import gc
import json
import re
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from actors.cell import cell_of_point
from clients.driver import DriverClient
from tests.conftest import token
from tests.live.test_end_to_end import setup_restaurant
from tests.waiting import DEADLINE_S, eventually

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "hexdispatch.json"


async def scrape(url: str) -> dict:
    """Every sample of the front door's ``/metrics``: ``{(name, frozenset(labels)): value}``, and the families."""
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        reply = await client.get(f"{url}/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(reply.text))
    samples = {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}
    return {"samples": samples, "families": {family.name: family for family in families}}


def value(scraped: dict, name: str, **labels) -> float:
    return scraped["samples"].get((name, frozenset(labels.items())), 0.0)


def histogram_is_cumulative(family) -> bool:
    buckets = [s.value for s in family.samples if s.name.endswith("_bucket")]
    count = [s.value for s in family.samples if s.name.endswith("_count")]
    return buckets == sorted(buckets) and buckets[-1] == count[0]


async def test_front_door_and_cell_metrics_scrape_cleanly(live, spot):
    owner, rest, [item] = await setup_restaurant(live, spot)
    cell = cell_of_point(*spot, live.app.state.settings.gateway.cell_res)
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        menu = await client.get(f"{live.url}/v1/restaurants/{rest['id']}/menu",
                                headers={"authorization": f"Bearer {token('customer', 'c-metrics')}"})
        missing = await client.get(f"{live.url}/v1/no-such-route/{rest['id']}")
    assert menu.status_code == 200 and missing.status_code == 404
    async with DriverClient(live.url, token("driver", f"d-{uuid.uuid4().hex[:8]}")) as driver:
        await driver.gps(spot[0] + 0.001, spot[1])

        async def cell_reported():
            await driver.gps(spot[0] + 0.001, spot[1])
            scraped = await scrape(live.url)
            held = sum(v for (name, labels), v in scraped["samples"].items()
                       if name == "hexdispatch_cell_drivers" and ("cell", cell) in labels)
            lags = value(scraped, "hexdispatch_cell_gps_lag_seconds_count")
            return scraped if held == 1 and lags > 0 else None

        scraped = await eventually(cell_reported, what="the cell's load report with the driver", interval_s=1.0)
        assert value(scraped, "hexdispatch_ws_connections", role="driver") >= 1
    gc.collect()  # the live server runs in this process: a full collection it must have timed
    scraped = await scrape(live.url)
    families = scraped["families"]

    # Request latency per route template, never per raw path.
    routes = {dict(labels)["route"] for (name, labels) in scraped["samples"]
              if name == "hexdispatch_http_request_duration_seconds_count"}
    assert "/v1/restaurants/{restaurant_id}/menu" in routes and "/v1/restaurants" in routes
    assert not any(re.search(r"/\d", route) for route in routes), routes
    assert value(scraped, "hexdispatch_http_request_duration_seconds_count", method="GET", route="<unmatched>",
                 status="404") >= 1
    assert value(scraped, "hexdispatch_http_request_duration_seconds_count", method="GET",
                 route="/v1/restaurants/{restaurant_id}/menu", status="200") >= 1
    for name in ("hexdispatch_http_request_duration_seconds", "hexdispatch_event_loop_lag_seconds",
                 "hexdispatch_cell_tick_seconds", "hexdispatch_cell_gps_lag_seconds"):
        assert families[name].type == "histogram", name
    assert histogram_is_cumulative(families["hexdispatch_cell_tick_seconds"])
    assert value(scraped, "hexdispatch_cell_tick_seconds_count") > 0
    assert value(scraped, "hexdispatch_event_loop_lag_seconds_count") > 0
    assert value(scraped, "hexdispatch_gc_pause_seconds_count", generation="2") >= 1
    assert value(scraped, "hexdispatch_ws_frames_in_total", role="driver") >= 2
    assert value(scraped, "hexdispatch_ws_frames_out_total", role="driver") >= 1  # the welcome
    assert {("hexdispatch_ws_connections", frozenset({("role", role)})) for role in ("driver", "customer", "admin")} \
        <= scraped["samples"].keys()
    fixes, fast = value(scraped, "hexdispatch_gps_fixes_total"), value(scraped, "hexdispatch_gps_fast_path_fixes_total")
    assert fixes >= 2 and 0 <= fast <= fixes
    assert value(scraped, "hexdispatch_gps_fast_path_ratio") == fast / fixes
    assert ("hexdispatch_outbox_overflows_total", frozenset()) in scraped["samples"]
    assert value(scraped, "hexdispatch_cell_pending_orders", cell=cell) == 0

    # Every metric the Grafana dashboard queries is one this front door exports.
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for panel in dashboard["panels"] for target in panel.get("targets", ())
               for name in re.findall(r"\bhexdispatch_[a-z0-9_]+", target["expr"])}
    exported = {name for name, _ in scraped["samples"]}
    assert len(queried) >= 15 and queried <= exported, sorted(queried - exported)
