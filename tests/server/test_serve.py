"""``hexdispatch serve`` on embedded defaults: starts, answers, keeps data across restarts, stops cleanly
(on Ctrl-C and on SIGTERM)."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from clients.http import wait_until_healthy
from tests.environment import child_environment
from tests.waiting import DEADLINE_S

BIN = Path(sys.executable).with_name("hexdispatch")
pytestmark = pytest.mark.live  # `hexdispatch serve` processes, embedded Postgres and Ray of their own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workdir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN), "serve", "--port", str(port), "--log-level", "warning"],
        cwd=workdir, env=child_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen, how: signal.Signals = signal.SIGINT) -> list[psutil.Process]:
    """Stop the server (Ctrl-C, or a supervisor's SIGTERM); return any of its descendants still alive afterwards.

    Exit status 0 means uvicorn shut down gracefully: Ray's own SIGTERM handler used to exit at once.
    """
    descendants = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(how)
    assert proc.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(descendants, timeout=20)
    return alive


def token(workdir: Path, role: str, sub: str) -> str:
    out = subprocess.run([str(BIN), "token", "--role", role, "--sub", sub], cwd=workdir, env=child_environment(),
                         capture_output=True, check=True)
    return out.stdout.decode().strip()


def test_serve_on_embedded_defaults(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        wait_until_healthy(url, proc)
        auth = {"authorization": f"Bearer {token(tmp_path, 'restaurant', 'r-1')}"}
        body = {"name": "Persisted", "address": "1 Main St", "latitude": 41.88, "longitude": -87.63}
        r = httpx.post(f"{url}/v1/restaurants", json=body, headers=auth, timeout=DEADLINE_S)
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
    finally:
        leftovers = stop(proc) if proc.poll() is None else []
    assert leftovers == [], f"orphaned processes: {[p.name() for p in leftovers]}"
    assert (tmp_path / ".hexdispatch" / "pgdata" / "PG_VERSION").exists()
    printed = proc.stdout.read().decode()
    # Where everything is, printed once at start-up (issue 15): the API, ops map, metrics, Ray's dashboard and its login.
    for line in (f"API            {url}/v1", f"ops map        {url}/ops", f"metrics        {url}/metrics",
                 "Ray dashboard  http://127.0.0.1:", f"signs with {tmp_path / '.hexdispatch' / 'jwt_secret'}",
                 ".venv/bin/hexdispatch"):
        assert line in printed, printed
    assert "ray get-auth-token" in printed or "no login needed" in printed

    proc = start(tmp_path, port)
    try:
        wait_until_healthy(url, proc)
        r = httpx.get(f"{url}/v1/restaurants/{rid}", headers=auth, timeout=DEADLINE_S)
        assert r.status_code == 200 and r.json()["name"] == "Persisted"
    finally:
        leftovers = stop(proc, signal.SIGTERM) if proc.poll() is None else []
    assert leftovers == []
