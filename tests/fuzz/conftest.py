"""The fuzz suite: bounded runs of ``bench.fuzz``'s properties (``hexdispatch bench fuzz`` runs them longer)."""

from __future__ import annotations

import asyncio

import pytest

from bench import fuzz
from tests.conftest import TEST_SECRET, Api
from tests.live.conftest import forget_cells_after_module  # noqa: F401 (an autouse fixture: no cell outlives us)


@pytest.fixture(scope="session")
async def session_loop():
    """The session's event loop, for properties that hypothesis drives synchronously, one coroutine per example."""
    return asyncio.get_running_loop()


@pytest.fixture(scope="module")
def world(app, session_loop) -> fuzz.World:
    """A kitchen, its item and a customer's order for one test module to fuzz (in the session's database, which
    the live server shares); a module of its own, as the HTTP fuzz may close the kitchen or delete the item."""
    api = Api(app, None, None)
    yield session_loop.run_until_complete(fuzz.make_world(api.client, TEST_SECRET))
    session_loop.run_until_complete(api.client.aclose())
