"""``hexdispatch serve`` on embedded defaults exposes nothing beyond its host and leaves nothing behind
(issue 13, item 9): its local Ray listens on 127.0.0.1 only, its access log carries no token, and a stop
ends the embedded Postgres even after an outside restart of it, and every Ray process it started."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest
from pgserver._commands import pg_ctl
from pgserver.utils import PostmasterInfo

from clients.http import wait_until_healthy
from server.db import stop_postgres
from server.local_ray import session_processes
from tests.waiting import DEADLINE_S

BIN = Path(sys.executable).with_name("hexdispatch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(pids: set[int]) -> list[tuple[str, str]]:
    """(address, process name) of every TCP socket listening in one of ``pids`` (``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        for pid in pids:
            if f"pid={pid}," in line:
                found.append((fields[3], line.split('(("', 1)[1].split('"', 1)[0]))
    return found


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # "*"
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def ray_session_of(processes: list[psutil.Process]) -> str:
    """The Ray session directory named on the command line of this server's GCS."""
    for process in processes:
        for part in process.cmdline():
            if part.startswith("--log_dir=") and "/session_" in part:
                return part.split("=", 1)[1].rsplit("/logs", 1)[0]
    return ""


def postgres_running_on(pgdata: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(pgdata) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.fixture
def workdir():
    """A directory the embedded Postgres's own system user can reach when the tests run as root (pytest's
    temporary directories live under a root-only 0700 directory, re-tightened by every pytest session)."""
    path = Path(tempfile.mkdtemp(prefix="hexdispatch-serve-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_serve_binds_ray_to_its_host_redacts_tokens_and_stops_all_it_started(workdir):
    tmp_path = workdir
    port, home = free_port(), tmp_path / "home"
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "RAY_ADDRESS", "REDIS_URL"}}
    env["HEXDISPATCH_HOME"] = str(home)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(BIN), "serve", "--port", str(port), "--log-level", "info"], cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(url, proc, timeout_s=300)
        server = psutil.Process(proc.pid)

        # Ray's servers listen on the server's host only (and they do listen: the check is not vacuous).
        def ray_listeners():
            found = listening({proc.pid} | {p.pid for p in server.children(recursive=True)})
            names = {name for _, name in found}
            return found if {"gcs_server", "raylet"} <= names else None

        listeners = wait_for(ray_listeners, 120, "Ray's GCS and raylet listening")
        assert all(is_loopback(address) for address, _ in listeners), listeners

        # A token in the query string and in the header: served, and logged redacted.
        jwt = subprocess.run([str(BIN), "token", "--role", "customer", "--sub", "c-1"], cwd=tmp_path, env=env,
                             capture_output=True, check=True).stdout.decode().strip()
        r = httpx.get(f"{url}/v1/health", params={"token": jwt}, headers={"authorization": f"Bearer {jwt}"},
                      timeout=DEADLINE_S)
        assert r.status_code == 200

        # Postgres restarted from outside: a new postmaster, which the server keeps using.
        pgdata = (home / "pgdata").resolve()
        before = PostmasterInfo.read_from_pgdata(pgdata).pid
        pg_ctl(["-w", "-m", "fast", "-l", str(pgdata / "log"), "restart"], pgdata=pgdata,
               user="pgserver" if os.geteuid() == 0 else None)
        after = PostmasterInfo.read_from_pgdata(pgdata).pid
        assert after != before
        wait_for(lambda: httpx.get(f"{url}/v1/health", timeout=5).status_code == 200, 60, "healthy after the restart")

        started = server.children(recursive=True)
        session = ray_session_of(started)
        assert session, [p.name() for p in started]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:  # the test failed with the server up: leave nothing running either
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stop_postgres((home / "pgdata").resolve(), "pgserver" if os.geteuid() == 0 else None)

    _, alive = psutil.wait_procs(started, timeout=30)
    assert alive == [], f"outlived the server: {[p.name() for p in alive]}"
    assert session_processes(session) == []
    assert not postgres_running_on(pgdata), "the restarted embedded Postgres outlived the server"
    info = PostmasterInfo.read_from_pgdata(pgdata)
    assert info is None or not info.is_running()

    text = log_path.read_text()
    assert "/v1/health?token=[redacted]" in text, text[-3000:]
    assert jwt not in text and "eyJ" not in text
