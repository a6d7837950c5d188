"""The OpenAPI 3.1 document (issue 15, item 2): every route of the app is in it, it validates, its examples
and the README's are true to the models, and real responses match the documented response models."""

from pathlib import Path

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from server.app import create_app
from server.openapi import OPERATIONS, ErrorBody, UndocumentedRoute, openapi_document, readme_examples, \
    route_operations
from tests.server.helpers import add_item, make_restaurant, place

README = Path(__file__).resolve().parents[2] / "README.md"


def operation(method: str, path: str):
    return next(op for op in OPERATIONS if (op.method, op.path) == (method, path))


def test_every_route_of_the_app_is_documented_and_the_document_is_openapi_3_1(settings):
    app = create_app(settings)
    document = openapi_document(app.routes)
    validate(document)  # raises on anything that is not OpenAPI 3.1
    assert document["openapi"] == "3.1.0"
    served = route_operations(app.routes)
    assert len(served) == len(OPERATIONS)
    for method, path in served:
        op = document["paths"][path][method.lower()]
        assert "500" in op["responses"]
        if op["security"]:
            assert op["x-roles"] and op["responses"]["401"]["content"]["application/json"]["schema"] == \
                {"$ref": "#/components/schemas/ErrorBody"}
    assert document["components"]["securitySchemes"]["bearer"]["bearerFormat"] == "JWT"


def test_a_route_without_an_operation_fails_the_build(settings):
    async def secret(request):  # pragma: no cover - never called
        raise AssertionError

    app = create_app(settings)
    app.router.routes.append(Route("/v1/secret", secret, methods=["GET"]))
    with pytest.raises(UndocumentedRoute, match="/v1/secret"):
        openapi_document(app.routes)


def test_examples_are_valid_for_their_models():
    for op in OPERATIONS:
        if op.request_example is not None:
            op.body.model_validate(op.request_example)
        if op.query_example:
            op.query.model_validate({k: str(v) for k, v in op.query_example.items()})
        if op.response_example is not None:
            op.response.model_validate(op.response_example)
        assert (op.request_example is not None) == (op.body is not None), op.path
        assert (op.response_example is not None) == (op.response is not None), op.path


def test_readme_shows_the_generated_examples():
    assert readme_examples() in README.read_text(), "run: .venv/bin/python -m server.openapi --readme"


async def test_the_document_and_the_docs_page_are_served_from_local_assets(as_role):
    anonymous = as_role(None)
    reply = await anonymous.get("/v1/openapi.json")
    assert reply.status_code == 200 and reply.json()["openapi"] == "3.1.0"
    assert set(reply.json()["paths"]) >= {"/v1/orders", "/v1/ws/driver", "/metrics"}
    page = await anonymous.get("/v1/docs")
    assert page.status_code == 200 and "https://" not in page.text and "http://" not in page.text
    assert "validatorUrl: null" in page.text  # Swagger UI would otherwise fetch a badge from swagger.io
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js"):
        assert f"/v1/docs/assets/{asset}" in page.text
        served = await anonymous.get(f"/v1/docs/assets/{asset}")
        assert served.status_code == 200 and len(served.content) > 10_000
    assert (await anonymous.get("/v1/docs/assets/nothing.js")).status_code == 404


async def test_real_responses_match_the_documented_models(as_role):
    owner, customer, driver = as_role("restaurant"), as_role("customer"), as_role("driver")
    calls = []

    async def call(method, template, path, client, **kwargs):
        reply = await client.request(method, path, **kwargs)
        op = operation(method, template)
        assert reply.status_code == op.status, (template, reply.text)
        op.response.model_validate(reply.json())
        calls.append((method, template))
        return reply.json()

    rest = await make_restaurant(owner, latitude=-44.5, longitude=71.5)
    operation("POST", "/v1/restaurants").response.model_validate(rest)
    rid = rest["id"]
    item = await add_item(owner, rid)
    await call("GET", "/v1/restaurants/{restaurant_id}", f"/v1/restaurants/{rid}", customer)
    await call("PATCH", "/v1/restaurants/{restaurant_id}", f"/v1/restaurants/{rid}", owner, json={"prep_minutes": 14})
    await call("GET", "/v1/restaurants/nearby", "/v1/restaurants/nearby", customer,
               params={"lat": -44.5, "lng": 71.5})
    await call("GET", "/v1/restaurants/{restaurant_id}/menu", f"/v1/restaurants/{rid}/menu", customer)
    await call("PATCH", "/v1/restaurants/{restaurant_id}/menu/items/{item_id}",
               f"/v1/restaurants/{rid}/menu/items/{item['id']}", owner, json={"description": "basil"})
    placed = await place(customer, rid, [{"item_id": item["id"], "quantity": 2}], dropoff=(-44.502, 71.503))
    assert placed.status_code == 201
    operation("POST", "/v1/orders").response.model_validate(placed.json())
    oid = placed.json()["id"]
    await call("GET", "/v1/orders", "/v1/orders", customer)
    await call("GET", "/v1/orders/{order_id}", f"/v1/orders/{oid}", customer)
    await call("POST", "/v1/orders/{order_id}/accept", f"/v1/orders/{oid}/accept", owner)
    await call("POST", "/v1/orders/{order_id}/ready-estimate", f"/v1/orders/{oid}/ready-estimate", owner,
               json={"ready_in_minutes": 5})
    await call("GET", "/v1/restaurants/{restaurant_id}/orders", f"/v1/restaurants/{rid}/orders", owner)
    await call("POST", "/v1/orders/{order_id}/cancel", f"/v1/orders/{oid}/cancel", customer, json={"reason": "x"})
    await call("GET", "/v1/orders/{order_id}/events", f"/v1/orders/{oid}/events", customer)
    await call("PUT", "/v1/drivers/me", "/v1/drivers/me", driver, json={"vehicle": "car", "capacity": 2})
    await call("GET", "/v1/drivers/me", "/v1/drivers/me", driver)
    await call("DELETE", "/v1/restaurants/{restaurant_id}/menu/items/{item_id}",
               f"/v1/restaurants/{rid}/menu/items/{item['id']}", owner)
    assert len(calls) == 15
    erased = await owner.delete(f"/v1/restaurants/{rid}")  # its one order is cancelled: finished
    assert erased.status_code == operation("DELETE", "/v1/restaurants/{restaurant_id}").status and not erased.content
    for reply in (await customer.get("/v1/orders/999999999999"), await as_role(None).get("/v1/orders"),
                  await customer.post("/v1/restaurants", json={})):
        assert reply.status_code in (401, 403, 404)
        ErrorBody.model_validate(reply.json())


def test_documented_roles_are_the_enforced_ones():
    """The roles each operation lists are those the authorisation test (``test_strict_input.ALLOWED``) checks."""
    from tests.server.test_strict_input import ALLOWED, PUBLIC

    documented = {("WS" if op.tag == "websockets" else op.method, op.path):
                  PUBLIC if op.public else tuple(sorted(role.value for role in op.roles)) for op in OPERATIONS}
    enforced = {route: roles if roles == PUBLIC else tuple(sorted(roles)) for route, roles in ALLOWED.items()}
    assert documented == enforced


def test_query_parameters_carry_json_schema_bounds(settings):
    document = openapi_document(create_app(settings).routes)
    nearby = {p["name"]: p["schema"] for p in document["paths"]["/v1/restaurants/nearby"]["get"]["parameters"]}
    assert nearby["lat"] == {"type": "number", "minimum": -90, "maximum": 90}
    assert nearby["limit"]["minimum"] == 1 and nearby["limit"]["maximum"] == 100
    assert '"ge"' not in str(document).replace("'", '"') and '"le"' not in str(document).replace("'", '"')
