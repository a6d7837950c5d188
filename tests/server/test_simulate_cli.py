"""``hexdispatch simulate`` against a real ``hexdispatch serve`` (issue 15): it refuses in one line a server that
does not take its tokens, and ``--cleanup`` leaves none of its "Sim Kitchen" restaurants behind. (A city with orders
takes minutes and stalls on a machine loaded many times over; erasing a restaurant with its orders and their trail
is tested through the API in tests/server/test_orders.py.)"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from clients.http import wait_until_healthy
from tests.environment import child_environment
from tests.server.test_serve import BIN, free_port, start, stop, token

pytestmark = pytest.mark.live  # a `hexdispatch serve` with its embedded Postgres and Ray


def test_simulate_cleanup_and_a_foreign_secret(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        wait_until_healthy(url, proc, timeout_s=180)
        foreign = subprocess.run([str(BIN), "simulate", "--url", url], cwd=tmp_path, capture_output=True, text=True,
                                 env=child_environment(HEXDISPATCH_JWT_SECRET="not-the-servers-" * 3), timeout=120)
        assert foreign.returncode == 2 and "Traceback" not in foreign.stderr
        assert foreign.stderr.startswith(f"hexdispatch simulate: {url} refuses our tokens (401)"), foreign.stderr

        summary_file = tmp_path / "summary.json"
        done = subprocess.run(
            [str(BIN), "simulate", "--url", url, "--drivers", "2", "--restaurants", "3", "--orders-per-minute", "0",
             "--duration", "1", "--cleanup", "--json", str(summary_file)],
            cwd=tmp_path, capture_output=True, text=True, env=child_environment(), timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        summary = json.loads(summary_file.read_text())
        assert summary["orders_placed"] == 0 and summary["lost"] == 0
        assert summary["kitchens_removed"] == 3 and summary["kitchens_kept_with_active_orders"] == 0
        assert "kitchen_ready_after_pickup: kitchens' 'ready' clicks answered 409" in done.stdout
        assert f"signing tokens with {tmp_path / '.hexdispatch' / 'jwt_secret'}" in done.stdout

        admin = {"authorization": f"Bearer {token(tmp_path, 'admin', 'checker')}"}
        near = httpx.get(f"{url}/v1/restaurants/nearby", params={"lat": 41.8781, "lng": -87.6298, "radius_m": 5000},
                         headers=admin).json()["items"]
        assert [r["name"] for r in near if r["name"].startswith("Sim Kitchen")] == []
    finally:
        if proc.poll() is None:
            stop(proc)
