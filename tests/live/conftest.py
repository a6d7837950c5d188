"""A real server on a free port (uvicorn in this event loop), real Ray, real websockets."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest
import uvicorn

from dispatch.cell import CellParams
from server.app import create_app
from server.gateway import GatewayParams
from tests.conftest import token

LIVE_PARAMS = GatewayParams(
    gps_flush_s=0.05, poll_timeout_s=2.0, cell_tick_s=0.1,
    cell=CellParams(offer_ttl_s=3.0, heartbeat_ttl_s=4.0, borrow_after_s=1.0),
)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="hexdispatch-tests")
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
                                ws_max_size=64 * 1024)
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


@pytest.fixture(scope="session")
async def live(settings, ray_local):
    server = LiveServer(settings.with_(use_ray=True, migrate_on_start=False, gateway=LIVE_PARAMS))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def spot():
    """A random place (lat, lng) of its own for a test, so cells do not mix tests."""
    return (random.uniform(-40, 40), random.uniform(-150, 150))


def tokens(role: str, sub: str) -> str:
    return token(role, sub)
