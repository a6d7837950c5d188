"""Both websockets under generated frames: an error frame for every refused frame, the socket open until the abuse
policy closes it with 1008, never 1011, and the server serving afterwards."""

from __future__ import annotations

import httpx
import pytest

from bench import fuzz
from tests.conftest import TEST_SECRET
from tests.waiting import DEADLINE_S

EXAMPLES = 50


@pytest.mark.parametrize("path", sorted(fuzz.SOCKETS))
def test_websocket_answers_every_frame(live, world, session_loop, spot, path):
    tally = fuzz.run_property(fuzz.socket_cases(path, spot),
                              lambda case: fuzz.check_socket(live.url, TEST_SECRET, world, case),
                              session_loop.run_until_complete, examples=EXAMPLES, deadline_s=60)
    assert sum(tally.values()) >= EXAMPLES and "answered" in tally, tally

    async def health() -> int:
        async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
            return (await client.get(f"{live.url}/v1/health")).status_code

    assert session_loop.run_until_complete(health()) == 200


@pytest.fixture
def spot():
    """One place for the run's valid fixes (one cell actor, not one per random place)."""
    import random

    return (random.uniform(-40, 40), random.uniform(-150, 150))


def test_a_command_repeating_an_earlier_id_is_answered_again_and_the_check_still_counts_every_error(
        live, world, session_loop):
    """Hypothesis's find: an ``accept`` reusing the id of an earlier ``ping`` gets that ping's pong again (the
    protocol's repeat rule), so the check must not stop at the second pong: it waits for its own closing ping's."""
    typeless = ({"lat": 0.0, "lng": 0.0}, False)
    case = fuzz.SocketCase("/v1/ws/driver", [typeless] * 4 + [
        ({"type": "ping", "id": "0000000"}, False), ({"type": "accept", "id": "0000000", "offer_id": "0"}, False),
        ({}, False)])
    assert session_loop.run_until_complete(fuzz.check_socket(live.url, TEST_SECRET, world, case)) == "answered"
