"""Transport limits and exposure (issue 13, items 4, 5 and 9) against a real uvicorn on a free port:
tokens never reach the logs, oversized handshakes are refused promptly, stalled readers are closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from clients.ws import ws_url
from server.log_redaction import install_log_redaction, redact
from tests.conftest import token
from tests.live.conftest import LiveServer


@pytest.fixture(scope="module")
async def plain(settings, pool):
    """The server without live dispatch (no Ray): HTTP and the websocket handshake are all these tests need."""
    server = LiveServer(settings.with_(use_ray=False, migrate_on_start=False))
    await server.start()
    yield server
    await server.stop()


class Captured(logging.Handler):
    """Every line written to the loggers it is attached to, formatted as a handler would."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def captured_logs(*names: str):
    handler, loggers = Captured(), [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_redact_finds_every_form_of_a_token():
    jwt = token("customer", "c-1")
    assert jwt.startswith("eyJ")
    cases = {
        f'127.0.0.1:5 - "GET /v1/orders?token={jwt}&after=3 HTTP/1.1" 200': "token=[redacted]&after=3",
        f'"WebSocket /v1/ws/customer?token={jwt}" [accepted]': "?token=[redacted]\"",
        f"headers: {{'authorization': 'Bearer {jwt}'}}": "Bearer [redacted]'",
        f"Authorization: BEARER {jwt}": "BEARER [redacted]",
        f"a JWT alone: {jwt}.": "a JWT alone: [redacted-jwt].",
    }
    for line, expected in cases.items():
        clean = redact(line)
        assert expected in clean and jwt not in clean and "eyJ" not in clean, clean
    assert redact("GET /v1/health 200") == "GET /v1/health 200"


def test_our_own_log_lines_redact_tokens():
    """``hexdispatch.*`` records reach the root logger's handlers redacted, tracebacks included."""
    jwt = token("driver", "d-logs")
    handler, root = Captured(), logging.getLogger()
    root.addHandler(handler)
    try:
        install_log_redaction()
        log = logging.getLogger("hexdispatch.test")
        log.warning("headers %s", {"authorization": f"Bearer {jwt}"})
        try:
            raise ValueError(f"bad url /v1/ws/driver?token={jwt}")
        except ValueError:
            log.exception("failed on %s", f"/v1/ws/driver?token={jwt}")
    finally:
        root.removeHandler(handler)
    joined = "\n".join(handler.lines)
    assert "Bearer [redacted]" in joined and "?token=[redacted]" in joined and "ValueError" in joined, joined
    assert jwt not in joined and "eyJ" not in joined, joined


async def test_access_log_lines_redact_tokens(plain):
    """uvicorn's access and websocket lines, as the server writes them, carry no token."""
    jwt = token("customer", "c-logs")
    with captured_logs("uvicorn.access", "uvicorn.error") as lines:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{plain.url}/v1/health", params={"token": jwt},
                                 headers={"authorization": f"Bearer {jwt}"})
            assert r.status_code == 200, r.text
        # No live dispatch on this server: the socket is refused, and uvicorn logs the handshake with its URL.
        with pytest.raises(InvalidStatus):
            async with connect(ws_url(plain.url, "/v1/ws/customer", jwt)):
                pass
        deadline = asyncio.get_running_loop().time() + 30
        while not any("WebSocket" in line for line in lines) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
    joined = "\n".join(lines)
    assert "/v1/health?token=[redacted]" in joined, joined
    assert "/v1/ws/customer?token=[redacted]" in joined, joined
    assert jwt not in joined and "eyJ" not in joined, joined
