"""``hexdispatch serve --workers 2``: a scrape of ``/metrics``, whichever worker answers it, adds up both workers'
figures (prometheus_client's multiprocess mode, issue 15 item 3)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.http import wait_until_healthy
from tests.environment import child_environment
from tests.live.conftest import free_port
from tests.waiting import DEADLINE_S, eventually_sync

BIN = Path(sys.executable).with_name("hexdispatch")
pytestmark = pytest.mark.live
REQUESTS = 24


def scrape(url: str) -> list:
    reply = httpx.get(f"{url}/metrics", timeout=DEADLINE_S)
    assert reply.status_code == 200
    return [sample for family in text_string_to_metric_families(reply.text) for sample in family.samples]


def test_workers_add_up_their_metrics(database_url, tmp_path):
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("needs REDIS_URL")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = child_environment(DATABASE_URL=database_url, REDIS_URL=redis_url, HEXDISPATCH_HOME=str(tmp_path / "home"))
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(BIN), "serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(url, proc, timeout_s=300)

        def both_workers():
            pids = {s.labels["process"] for s in scrape(url) if s.name == "hexdispatch_front_door_info" and s.value == 1}
            return pids if len(pids) == 2 else None

        pids = eventually_sync(both_workers, what="both workers' figures in a scrape", interval_s=1.0)
        assert pids <= {str(p.pid) for p in psutil.Process(proc.pid).children(recursive=True)}
        for _ in range(REQUESTS):  # a connection each: the kernel spreads them over the two workers
            assert httpx.get(f"{url}/v1/openapi.json", timeout=DEADLINE_S).status_code == 200
        for _ in range(6):  # whichever worker answers, it counts every worker's requests
            counts = [s.value for s in scrape(url) if s.name == "hexdispatch_http_request_duration_seconds_count"
                      and s.labels.get("route") == "/v1/openapi.json" and s.labels.get("status") == "200"]
            assert counts == [REQUESTS], counts
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    assert "Traceback" not in log_path.read_text(errors="replace")
