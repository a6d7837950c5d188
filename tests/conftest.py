"""Shared fixtures: a real Postgres database per test session, the app, and authenticated clients.

``DATABASE_URL`` (when set) names a server in which a fresh database is
created for the session and dropped afterwards; otherwise an embedded
Postgres (pgserver) is started in a temporary directory. ``REDIS_URL`` (when
set) names the Redis of the scale-out tests. Every other setting a shell may
export (``RAY_ADDRESS``, ``HEXDISPATCH_*``, ``RAY_*``) is removed from this
process's environment at start-up: each test builds what it needs explicitly.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from server.app import create_app
from server.auth import mint_token
from server.config import Settings
from server.db import EmbeddedPostgres
from tests.local_ray import init_local_ray
from tests.environment import CONFIGURING, configures

TEST_SECRET = "test-secret-" + uuid.uuid4().hex


def pytest_configure(config):
    """Forget the ambient settings of whoever runs the suite (``DATABASE_URL`` and ``REDIS_URL`` are its inputs)."""
    for name in [k for k in os.environ if configures(k) and k not in CONFIGURING]:
        del os.environ[name]


#: Fixtures that make a test ``live`` (a Ray of the session or of the module), ``db`` (a Postgres server)
#: or ``redis`` (the Redis of ``REDIS_URL``).
LIVE_FIXTURES = frozenset({"ray_local", "ray_running"})
DB_FIXTURES = frozenset({"postgres_server"})
REDIS_FIXTURES = frozenset({"redis_clients", "redis_client"})


def pytest_collection_modifyitems(config, items):
    """Mark every test by what it needs (fixtures are followed to their own fixtures), so that
    ``make test-fast`` (``-m "not live and not db and not redis"``) keeps the pure core whoever adds a test."""
    for item in items:
        needs = set(getattr(item, "fixturenames", ()))
        if needs & LIVE_FIXTURES:
            item.add_marker(pytest.mark.live)
        if needs & DB_FIXTURES:
            item.add_marker(pytest.mark.db)
        if needs & REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> str:
    """A DSN for a Postgres server the tests may create databases on."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    try:
        yield embedded.start()
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
async def database_url(postgres_server) -> str:
    """A fresh, empty database for this test session (dropped at the end)."""
    name = f"hexdispatch_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield _with_database(postgres_server, name)
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def settings(database_url, tmp_path_factory) -> Settings:
    return Settings(
        database_url=database_url,
        use_ray=False,
        jwt_secret=TEST_SECRET,
        home=tmp_path_factory.mktemp("home"),
        # The suite shares one Postgres (100 connections) with servers, cell actors and benches it starts.
        db_pool_max=6,
    )


@pytest.fixture(scope="session")
async def app(settings):
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
def pool(app):
    return app.state.pool


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session."""
    ray = init_local_ray(num_cpus=2, include_dashboard=False, logging_level="ERROR", namespace="hexdispatch-tests")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
async def live(settings, ray_local, pool):
    """The in-process live server (``tests/live/conftest.py``; the ``pool`` fixture has migrated the session
    database)."""
    from tests.live.conftest import LIVE_PARAMS, LiveServer

    server = LiveServer(settings.with_(use_ray=True, migrate_on_start=False, gateway=LIVE_PARAMS))
    await server.start()
    yield server
    await server.stop()


def token(role: str, sub: str, ttl_s: int = 3600) -> str:
    return mint_token(TEST_SECRET, role, sub, now=int(time.time()), ttl_s=ttl_s)


class Api:
    """An httpx client bound to the in-process app, acting as one principal."""

    def __init__(self, app, role: str | None, sub: str | None):
        headers = {"authorization": f"Bearer {token(role, sub)}"} if role else {}
        self.sub = sub
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://hexdispatch.test",
            headers=headers,
        )

    def __getattr__(self, name):
        return getattr(self.client, name)


@pytest.fixture
async def as_role(app):
    """``as_role(role, sub=None)``: a client acting as a (fresh, unless named) principal."""
    clients: list[Api] = []

    def make(role: str | None, sub: str | None = None) -> Api:
        api = Api(app, role, sub or f"{role}-{uuid.uuid4().hex[:10]}")
        clients.append(api)
        return api

    yield make
    for api in clients:
        with contextlib.suppress(Exception):
            await api.client.aclose()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
