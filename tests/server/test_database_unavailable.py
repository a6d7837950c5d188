"""Postgres out of reach during a request: 503 ``unavailable`` with ``Retry-After``, never a 500; back to
normal once Postgres answers again. Through the real app, its pool pointed at a private Postgres that the test
stops and starts."""

from __future__ import annotations

import httpx

from server.app import create_app
from server.config import Settings
from tests.conftest import TEST_SECRET, token
from tests.private_postgres import private_postgres  # noqa: F401 - the fixture
from tests.server.helpers import restaurant_body
from tests.waiting import eventually


def client(app, role: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                             base_url="http://hexdispatch.test",
                             headers={"authorization": f"Bearer {token(role, f'{role}-unavailable')}"})


async def test_requests_while_postgres_is_down_answer_503_with_retry_after(private_postgres, tmp_path):
    settings = Settings(database_url=private_postgres.dsn, use_ray=False, jwt_secret=TEST_SECRET, home=tmp_path,
                        db_pool_min=1, db_pool_max=2)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with client(app, "restaurant") as owner, client(app, "customer") as customer:
            made = await owner.post("/v1/restaurants", json=restaurant_body())
            assert made.status_code == 201, made.text
            private_postgres.stop()
            try:
                answers = [
                    await owner.post("/v1/restaurants", json=restaurant_body()),
                    await customer.get("/v1/orders/1"),
                    await customer.get("/v1/health"),
                ]
            finally:
                private_postgres.start()
            for answer in answers:
                assert answer.status_code == 503, (answer.request.url, answer.status_code, answer.text)
                assert answer.json()["error"]["code"] == "unavailable"
                assert int(answer.headers["retry-after"]) > 0

            async def created_again():
                return (await owner.post("/v1/restaurants", json=restaurant_body())).status_code == 201
            await eventually(created_again, what="a write once Postgres is back")


def test_a_client_that_went_away_is_not_a_database_outage():
    """uvicorn reports a websocket client gone mid-send as an ``OSError``: that must reach neither the 503 nor a
    handler that treats it as Postgres being down (the chaos bench's front-door storm logged thousands)."""
    from uvicorn.protocols.utils import ClientDisconnected

    from server.errors import DATABASE_UNAVAILABLE

    assert not issubclass(ClientDisconnected, DATABASE_UNAVAILABLE)
    assert issubclass(ConnectionRefusedError, DATABASE_UNAVAILABLE)  # what asyncpg raises for a stopped Postgres
