"""A Postgres server of a test's own, in a temporary directory, that the test may stop and restart.

Fault-injection tests must never touch the machine's shared Postgres: they
start one of these on a free port instead (the system's PostgreSQL binaries,
run as the ``postgres`` user when the tests run as root, since Postgres
refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14)]


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    return next((d for d in BIN_DIRS if (d / "pg_ctl").exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """``start()``, ``stop()``, ``restart()`` (fast mode: sessions are cut) and ``dsn``; ``destroy()`` at the end."""

    def __init__(self):
        self.bin = _bin_dir()
        if self.bin is None:
            pytest.skip("fault tests need the PostgreSQL server binaries (initdb, pg_ctl)")
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="hexdispatch-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if self.user is not None:
            record = pwd.getpwnam(self.user)
            os.chown(self.root, record.pw_uid, record.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([str(self.bin / program), *args], check=True, user=self.user, cwd=self.root,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def _ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60", *args)

    def start(self) -> "PrivatePostgres":
        self._ctl("start")
        return self

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def destroy(self) -> None:
        subprocess.run([str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", "-m", "immediate"], user=self.user,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_postgres():
    """A running :class:`PrivatePostgres`, destroyed after the test."""
    server = PrivatePostgres().start()
    try:
        yield server
    finally:
        server.destroy()


async def eventually(predicate, timeout_s: float = 60.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` holds (polling), failing after a generous deadline."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)
