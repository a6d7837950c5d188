"""A real server on a free port (uvicorn in this event loop), real Ray, real websockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn

from dispatch.cell import CellParams
from clients.http import wait_until_healthy
from server.app import create_app
from server.gateway import GatewayParams
from server.serve import WEBSOCKET_OPTIONS
from tests.conftest import token
from tests.environment import child_environment
from tests.local_ray import init_local_ray

LIVE_PARAMS = GatewayParams(
    gps_flush_s=0.05, poll_timeout_s=2.0, cell_tick_s=0.1,
    # No live test waits for an offer to expire (tests/test_cell.py drives expiry with an explicit clock):
    # the offer TTL only has to outlast a starved test process answering it. Drivers that must stay alive
    # stream their position (``streaming_gps``); the silent-driver test waits out the heartbeat TTL once,
    # so it is as short as a starved streaming driver allows.
    cell=CellParams(offer_ttl_s=30.0, heartbeat_ttl_s=20.0, borrow_after_s=1.0),
)
#: How often a test's driver app sends its position while it must look alive to its cell.
GPS_EVERY_S = 1.0


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session."""
    ray = init_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="hexdispatch-tests")
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                **WEBSOCKET_OPTIONS)
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)


@pytest.fixture(scope="module", autouse=True)
def forget_cells_after_module(request):
    """Kill the (detached) cell actors a test module created, so they stop holding Postgres connections."""
    yield
    import ray

    if not ray.is_initialized():
        return
    from actors.cell import NAMESPACE, cell_handles

    for handle in cell_handles(NAMESPACE).values():
        ray.kill(handle, no_restart=True)


@pytest.fixture(scope="session")
async def live(settings, ray_local, pool):
    """The in-process live server (the ``pool`` fixture has migrated the session database)."""
    server = LiveServer(settings.with_(use_ray=True, migrate_on_start=False, gateway=LIVE_PARAMS))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def spot():
    """A random place (lat, lng) of its own for a test, so cells do not mix tests."""
    return (random.uniform(-40, 40), random.uniform(-150, 150))


@contextlib.asynccontextmanager
async def streaming_gps(driver, where):
    """While the block runs, ``driver`` sends its position ``where()`` every ``GPS_EVERY_S``, as a real app
    streams GPS: its cell's heartbeat sees it alive however long the test's waits take on a loaded machine."""

    async def stream():
        while True:
            await driver.gps(*where())
            await asyncio.sleep(GPS_EVERY_S)

    task = asyncio.get_running_loop().create_task(stream())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def tokens(role: str, sub: str) -> str:
    return token(role, sub)


HEXDISPATCH = Path(sys.executable).with_name("hexdispatch")


class ServerProcess:
    """``hexdispatch serve`` in its own process, sharing this session's database, Ray and secret."""

    def __init__(self, settings, tmp_path: Path, *extra_args: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        environment = child_environment(
            DATABASE_URL=settings.database_url,
            HEXDISPATCH_JWT_SECRET=settings.jwt_secret,
            HEXDISPATCH_HOME=str(tmp_path / "home"),
            **(env or {}),
        )
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(HEXDISPATCH), "serve", "--port", str(self.port), "--log-level", "warning", *extra_args],
                cwd=tmp_path, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_healthy(self, timeout_s: float = 120.0) -> None:
        try:
            wait_until_healthy(self.url, self.process, timeout_s)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- server log ---\n{self.log.read_text()[-4000:]}") from exc

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("several front doors need Redis: set REDIS_URL")
    return url


def session_ray_address(ray_local) -> str:
    """The GCS address of this session's Ray, for server processes to join."""
    return ray_local.get_runtime_context().gcs_address
