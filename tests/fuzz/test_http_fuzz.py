"""Every route of the app under generated requests: never a 5xx, every error JSON ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import pytest

from bench import fuzz
from server.app import routes
from tests.conftest import TEST_SECRET, Api

EXAMPLES_PER_ROUTE = 20
ROUTES = fuzz.http_routes(routes())


def test_every_route_is_fuzzed_with_its_inputs(app):
    """Every route of the router is fuzzed, and one that reads a body or a query string names the model it
    validates with in ROUTE_INPUTS."""
    assert sorted(ROUTES) == sorted(fuzz.http_routes(app.router.routes))
    assert set(fuzz.ROUTE_INPUTS) <= set(ROUTES)
    with_body = {route for route in ROUTES if route[0] in ("POST", "PATCH", "PUT")}
    takes_no_body = {("POST", "/v1/orders/{order_id}/accept"), ("POST", "/v1/orders/{order_id}/start-preparing"),
                     ("POST", "/v1/orders/{order_id}/ready")}
    assert with_body - takes_no_body == {r for r, (body, _) in fuzz.ROUTE_INPUTS.items() if body is not None}


@pytest.mark.parametrize("method,path", ROUTES)
def test_http_route_never_answers_5xx(app, world, session_loop, method, path):
    api = Api(app, None, None)
    try:
        tally = fuzz.run_property(fuzz.http_cases([(method, path)], world),
                                  lambda case: fuzz.check_http(api.client, TEST_SECRET, world, case),
                                  session_loop.run_until_complete, examples=EXAMPLES_PER_ROUTE, deadline_s=20)
    finally:
        session_loop.run_until_complete(api.client.aclose())
    assert sum(tally.values()) >= EXAMPLES_PER_ROUTE, tally
    if path != "/v1/health":  # the generated requests get past authentication, not only into 401s
        assert set(tally) - {"401"}, tally
