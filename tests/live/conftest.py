"""A real server on a free port (uvicorn in this event loop), real Ray, real websockets.

The session's ``ray_local`` and ``live`` fixtures are in ``tests/conftest.py`` (``tests/fuzz`` uses them too).
"""

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

import h3
import pytest
import uvicorn

from dispatch.cell import CellParams
from dispatch.movement import MovementParams
from clients.http import wait_until_healthy
from server.app import create_app
from server.gateway import GatewayParams
from server.serve import WEBSOCKET_OPTIONS
from tests.conftest import token
from tests.environment import child_environment

LIVE_PARAMS = GatewayParams(
    gps_flush_s=0.05, poll_timeout_s=2.0, cell_tick_s=0.1,
    # No live test waits for an offer to expire (tests/test_cell.py drives expiry with an explicit clock):
    # the offer TTL only has to outlast a starved test process answering it. Drivers that must stay alive
    # stream their position (``streaming_gps``); the silent-driver test waits out the heartbeat TTL once,
    # so it is as short as a starved streaming driver allows.
    cell=CellParams(offer_ttl_s=30.0, heartbeat_ttl_s=20.0, borrow_after_s=1.0),
    # Tests move drivers by up to about 1 km at once (to the restaurant, to the drop-off): not jumps.
    movement=MovementParams(slack_m=2000.0),
    # A starved cell may take seconds to answer; tests check the promise an order placement returns. Well under
    # the HTTP clients' timeout (clients.http.DEFAULT_TIMEOUT_S), with room for the placement's own work.
    promise_timeout_s=10.0,
    eta_board_s=1.0,  # delivery-time quotes at search follow the cells within a second
)
#: How often a test's driver app sends its position while it must look alive to its cell.
GPS_EVERY_S = 1.0


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


@pytest.fixture
def spot():
    """A random place (lat, lng) of its own for a test, so cells do not mix tests: the centre of a random cell, so
    that what a test puts within a kilometre or two of it (drivers, kitchens, drop-offs) is in that same cell.
    A random point itself may lie metres from a cell edge, with a driver 100 m away in the neighbouring cell."""
    cell = h3.latlng_to_cell(random.uniform(-40, 40), random.uniform(-150, 150), GatewayParams().cell_res)
    return h3.cell_to_latlng(cell)


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


@pytest.fixture
async def served(live, spot):
    """A restaurant at ``spot``: the service area (derived from the restaurants) then holds it."""
    from clients.http import ApiClient

    owner = ApiClient(live.url, token("restaurant", f"r-{random.getrandbits(40):x}"))
    return await owner.create_restaurant(name="Served", address="1 Test St", latitude=spot[0], longitude=spot[1],
                                         prep_minutes=1)


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


def session_ray_env(ray_local) -> dict[str, str]:
    """What a server process needs to join this session's Ray: its GCS address and its authentication mode.

    Ray turns token authentication on for every new local cluster (``RAY_AUTH_MODE=token`` in this process,
    the token in ``~/.ray/auth_token``) but never for a process given an explicit address: say it."""
    return {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
            "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
