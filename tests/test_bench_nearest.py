"""``hexdispatch bench nearest`` end to end at a small size: real Redis, real Postgres, real Ray cell actors."""

from __future__ import annotations

import asyncio
import json
import os

import asyncpg
import pytest
import redis

from actors.cell import NAMESPACE, actor_name
from bench import nearest
from tests.local_ray import init_local_ray
from tests.waiting import eventually_sync

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
QUERIES = 60


@pytest.fixture(scope="module")
def ray_running():
    """The session's Ray when one already runs (``tests/live``'s ``ray_local``), else a local one for this module.

    ``ray_local`` itself is not imported here: a second definition of that
    session fixture would call ``ray.init`` a second time in a full run.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    init_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                   namespace="hexdispatch-tests")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def redis_client():
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis answers at {REDIS_URL}")
    yield client
    client.close()


def test_nearest_bench_end_to_end(tmp_path, postgres_server, ray_running, redis_client):
    out = tmp_path / "out"
    code = nearest.main([
        "--drivers", "3000", "--queries", str(QUERIES), "--warmup", "5", "--half-side-km", "3",
        "--offline-share", "0.2", "--batch", "400", "--database-url", postgres_server, "--redis-url", REDIS_URL,
        "--out", str(out), "--json", str(tmp_path / "figures.json"),
    ])
    figures = json.loads((tmp_path / "figures.json").read_text())
    verdict = figures["verdict"]
    assert code == (0 if verdict["passed"] else 1)
    assert verdict["passed"] == (verdict["target_met"] and verdict["answers_agree"])
    assert verdict["target_met"] == all(verdict["ratios"][name] <= 0.1 for name in verdict["gated_on"])

    # Both sides held exactly the same available drivers, and gave the same answers.
    assert figures["available"] + figures["offline"] == 3000 and figures["offline"] > 0
    assert figures["load"]["cells_hold"] == {"idle": figures["available"], "offline": figures["offline"]}
    assert figures["load"]["redis_members"] == figures["available"]
    agreement = figures["measure"]["agreement"]
    assert agreement["queries"] == QUERIES and agreement["differs"] == 0 and agreement["examples"] == []
    assert agreement["within_tolerance"] == QUERIES and agreement["rate"] == 1.0
    assert agreement["same_order"] <= agreement["same_set"] <= agreement["within_tolerance"]
    assert agreement["same_set"] >= QUERIES * 0.9

    latency = figures["measure"]["latency"]
    for name in nearest.LABELS:
        r = latency[name]
        assert r["n"] == QUERIES and 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"], name
    assert latency["in_actor_home"]["p50_ms"] <= latency["in_actor_all_cells"]["p50_ms"]
    assert figures["measure"]["home_cell_without_actor"] == 0
    assert 1 <= figures["measure"]["fanout_cells"]["mean"] <= figures["measure"]["fanout_cells"]["max"]
    assert figures["cells"] == len(figures["cell_ids"]) >= 1
    ratio = latency["in_actor_home"]["p50_ms"] / latency["redis"]["p50_ms"]
    assert verdict["ratios"]["in_actor_home_p50"] == pytest.approx(ratio, rel=1e-3)
    assert figures["redis"]["our_calls"] == QUERIES + 5 and figures["redis"]["server_mean_ms"] > 0

    # Written out, and nothing left behind: the Redis key, the cell actors, the database.
    assert (out / "nearest.md").read_text().startswith("# Nearest available drivers")
    assert json.loads((out / "nearest.json").read_text())["verdict"] == verdict
    assert sorted(p.name for p in out.glob("*.png")) == ["nearest_cdf.png", "nearest_latency.png",
                                                        "nearest_vs_density.png"]
    assert not redis_client.exists(figures["redis"]["key"])
    eventually_sync(lambda: not [c for c in figures["cell_ids"] if _named_actor_exists(ray_running, actor_name(c))],
                    what="the bench's cell actors gone")
    assert not asyncio.run(_database_exists(postgres_server, figures["database"]))


def _named_actor_exists(ray, name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
        return True
    except ValueError:
        return False


async def _database_exists(dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name) > 0
    finally:
        await conn.close()
