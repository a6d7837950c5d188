"""The OpenAPI 3.1 document of the HTTP API, built from the pydantic models the endpoints validate with.

Each operation of :data:`OPERATIONS` names its request body, query string and
response models (``server.schemas``, ``server.api.views``), the roles it
admits, its refusals and an example of a call. :func:`openapi_document` walks
the app's own routes and refuses to build when a route has no operation, or
an operation no route, so the document cannot fall behind the router.
``python -m server.openapi --readme`` rewrites the README's examples from
the same operations.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from server import schemas as s
from server.api import views as v
from server.auth import Role

REF = "#/components/schemas/{model}"
ALL_ROLES = tuple(Role)


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict] | None = None


class ErrorBody(BaseModel):
    """Every refusal: a 4xx status and ``{"error": {"code", "message"}}`` (``details`` on 422s)."""

    error: ErrorDetail


#: What each refusal status means, for every operation that may answer it.
ERROR_STATUS = {
    400: "malformed body or header",
    401: "no valid bearer token",
    403: "the token's role may not do this",
    404: "not found (or not yours)",
    409: "refused by the order lifecycle or the current state",
    413: "body too large",
    422: "a field is invalid (``details`` lists each)",
    429: "rate limited; retry later",
    503: "the order's cell would exceed the deployment's cell cap (`cell_capacity`); retry later",
}


@dataclass(frozen=True)
class Operation:
    """One documented call: ``method path``, who may make it, what it takes and what it answers."""

    method: str
    path: str
    summary: str
    tag: str
    #: Roles admitted (an empty tuple: no token needed).
    roles: tuple[Role, ...] = ALL_ROLES
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    headers: tuple[tuple[str, str, bool], ...] = ()  # (name, description, required)
    media_type: str = "application/json"
    request_example: dict | None = None
    response_example: dict | list | None = None
    query_example: dict = field(default_factory=dict)
    description: str = ""

    @property
    def public(self) -> bool:
        return not self.roles


_AT = "2026-12-03T12:00:00.000000Z"
_RESTAURANT_IN = {"name": "Trattoria Roma", "address": "1 Main St", "latitude": 41.8781, "longitude": -87.6298,
                  "cuisine_tags": ["italian"], "prep_minutes": 12}
_RESTAURANT = {"id": 42, "name": "Trattoria Roma", "cuisine_tags": ["italian"], "address": "1 Main St",
               "location": {"lat": 41.8781, "lng": -87.6298}, "h3_cell": "8a2664c1a2dffff", "prep_minutes": 12,
               "opening_hours": None, "timezone": "UTC", "is_open": True, "open_now": True,
               "delivery_radius_m": 5000, "delivery_fee_cents": 299, "created_at": _AT, "updated_at": _AT}
_OWNED = {**_RESTAURANT, "owner": "restaurant-7"}
_NEARBY = {**_RESTAURANT, "distance_m": 412.5,
           "delivery_eta": {"minutes_low": 21, "minutes": 26, "minutes_high": 34, "as_of": 1764763197.5}}
_ITEM = {"id": 7, "restaurant_id": 42, "name": "Margherita", "description": "", "price_cents": 1250,
         "available": True, "updated_at": _AT}
_ORDER_IN = {"restaurant_id": 42, "items": [{"item_id": 7, "quantity": 2}],
             "dropoff": {"lat": 41.8831, "lng": -87.6248}, "dropoff_address": "5 Lake St"}
_PROMISE = {"given_at": 1764763200.0, "basis": "queue", "dropoff_at": 1764765120.0, "dropoff_early": 1764764700.0,
            "dropoff_late": 1764765780.0, "pickup_at": 1764764520.0, "courier_arrival_at": 1764764280.0}
_ORDER = {"id": 1001, "customer_id": "customer-3", "restaurant_id": 42,
          "items": [{"item_id": 7, "name": "Margherita", "unit_price_cents": 1250, "quantity": 2,
                     "line_total_cents": 2500}],
          "subtotal_cents": 2500, "delivery_fee_cents": 299, "total_cents": 2799,
          "dropoff": {"lat": 41.8831, "lng": -87.6248, "address": "5 Lake St"}, "notes": "",
          "status": "placed", "kitchen_status": "placed", "courier_status": "unassigned", "driver_id": None,
          "version": 1, "placed_at": _AT, "ready_estimate_at": "2026-12-03T12:12:00.000000Z", "ready_at": None,
          "assigned_at": None, "picked_up_at": None, "delivered_at": None, "cancelled_at": None,
          "promise": _PROMISE, "eta": _PROMISE}


def _order(**changes) -> dict:
    return {**_ORDER, **changes}


_EVENT = {"order_id": 1001, "seq": 1, "event": "placed", "status": "placed", "kitchen_status": "placed",
          "courier_status": "unassigned", "payload": {}, "actor": "customer", "at": 1764763200.0, "eta": None}
_KITCHEN = (Role.RESTAURANT, Role.ADMIN)
_OWNER_ERRORS = (401, 403, 404)
_LIFECYCLE_ERRORS = (401, 403, 404, 409)

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/v1/health", "Liveness and readiness (200 only when Postgres answers)", "service", roles=(),
              response=v.Health, response_example={"status": "ok"}),
    Operation("GET", "/v1/openapi.json", "This document", "service", roles=(),
              description="The OpenAPI 3.1 description of every HTTP route."),
    Operation("GET", "/v1/docs", "Interactive API documentation (Swagger UI, served locally)", "service", roles=(),
              media_type="text/html"),
    Operation("GET", "/v1/docs/assets/{path}", "Swagger UI's static files", "service", roles=(),
              media_type="application/octet-stream", errors=(404,)),
    Operation("GET", "/metrics", "Prometheus metrics of this front door (text exposition format)", "service",
              roles=(), media_type="text/plain"),
    Operation("POST", "/v1/restaurants", "Onboard a restaurant", "restaurants", roles=_KITCHEN,
              body=s.RestaurantIn, response=v.RestaurantView, status=201, errors=(400, 401, 403, 413, 422),
              request_example=_RESTAURANT_IN, response_example=_OWNED,
              description="`owner_sub` (onboarding for another account) is for admins only."),
    Operation("GET", "/v1/restaurants/nearby", "Restaurants near a point, nearest first (keyset pages)",
              "restaurants", query=s.NearbyQuery, response=v.RestaurantPage, errors=(401, 422),
              query_example={"lat": 41.8781, "lng": -87.6298, "radius_m": 3000, "cuisine": "italian"},
              response_example={"items": [_NEARBY], "next_cursor": None},
              description="Each item's `delivery_eta` is how long an order placed now would take to reach the "
                          "searched point (minutes from now: p10 `minutes_low`, point `minutes`, p90 `minutes_high`), "
                          "from the couriers of the restaurant's cell (or, when it has none, its neighbours'), "
                          "read every few seconds (`as_of`); null without live dispatch or courier data."),
    Operation("GET", "/v1/restaurants/{restaurant_id}", "One restaurant", "restaurants", response=v.RestaurantView,
              errors=(401, 404), response_example=_RESTAURANT,
              description="`owner` is shown only to the owning account and admins."),
    Operation("PATCH", "/v1/restaurants/{restaurant_id}", "Change a restaurant's fields", "restaurants",
              roles=_KITCHEN, body=s.RestaurantPatch, response=v.RestaurantView,
              errors=(*_OWNER_ERRORS, 400, 413, 422), request_example={"prep_minutes": 15, "is_open": False},
              response_example={**_OWNED, "prep_minutes": 15, "is_open": False, "open_now": False}),
    Operation("DELETE", "/v1/restaurants/{restaurant_id}", "Erase a restaurant with its menu and finished orders",
              "restaurants", roles=_KITCHEN, status=204, errors=_LIFECYCLE_ERRORS,
              description="409 `active_orders` while an order of it is still being cooked or delivered."),
    Operation("GET", "/v1/restaurants/{restaurant_id}/menu", "A restaurant's menu and current status",
              "restaurants", response=v.MenuView, errors=(401, 404),
              response_example={"restaurant": _RESTAURANT,
                                "status": {"open_now": True, "prep_minutes": 12, "active_orders": 3},
                                "items": [_ITEM]}),
    Operation("POST", "/v1/restaurants/{restaurant_id}/menu/items", "Add a menu item", "restaurants",
              roles=_KITCHEN, body=s.MenuItemIn, response=v.MenuItemView, status=201,
              errors=(*_OWNER_ERRORS, 400, 413, 422), request_example={"name": "Margherita", "price_cents": 1250},
              response_example=_ITEM),
    Operation("PATCH", "/v1/restaurants/{restaurant_id}/menu/items/{item_id}", "Change a menu item", "restaurants",
              roles=_KITCHEN, body=s.MenuItemPatch, response=v.MenuItemView,
              errors=(*_OWNER_ERRORS, 400, 413, 422), request_example={"available": False},
              response_example={**_ITEM, "available": False}),
    Operation("DELETE", "/v1/restaurants/{restaurant_id}/menu/items/{item_id}", "Remove a menu item",
              "restaurants", roles=_KITCHEN, response=v.Deleted, errors=_OWNER_ERRORS,
              response_example={"deleted": 7}),
    Operation("GET", "/v1/restaurants/{restaurant_id}/orders", "The kitchen's orders, newest first", "restaurants",
              roles=_KITCHEN, query=s.RestaurantOrdersQuery, response=v.OrderPage, errors=(*_OWNER_ERRORS, 422),
              query_example={"active": "true", "limit": 20},
              response_example={"items": [_ORDER], "next_cursor": None}),
    Operation("POST", "/v1/orders", "Place an order (idempotent by key)", "orders", roles=(Role.CUSTOMER,),
              body=s.OrderIn, response=v.OrderView, status=201, errors=(400, 401, 403, 409, 413, 422, 429, 503),
              headers=(("Idempotency-Key", "unique per order (at most 200 characters); a retry with the same key "
                        "and body answers the first order with 200", True),),
              request_example=_ORDER_IN, response_example=_ORDER),
    Operation("GET", "/v1/orders", "The caller's orders, newest first", "orders", query=s.PageQuery,
              response=v.OrderPage, errors=(401, 422), query_example={"limit": 20},
              response_example={"items": [_ORDER], "next_cursor": None}),
    Operation("GET", "/v1/orders/{order_id}", "One order", "orders", response=v.OrderView, errors=(401, 404),
              response_example=_ORDER),
    Operation("GET", "/v1/orders/{order_id}/events", "An order's events after a sequence number", "orders",
              query=s.EventsQuery, response=v.EventList, errors=(401, 404, 422), query_example={"after": 0},
              response_example={"items": [_EVENT]}),
    Operation("POST", "/v1/orders/{order_id}/cancel", "Cancel an order", "orders",
              roles=(Role.CUSTOMER, Role.RESTAURANT, Role.ADMIN), body=s.CancelIn, response=v.OrderView,
              errors=(*_LIFECYCLE_ERRORS, 400, 413, 422), request_example={"reason": "changed my mind"},
              response_example=_order(status="cancelled", kitchen_status="placed", version=2, cancelled_at=_AT),
              description="The body is optional."),
    Operation("POST", "/v1/orders/{order_id}/accept", "The kitchen accepts the order", "orders", roles=_KITCHEN,
              response=v.OrderView, errors=_LIFECYCLE_ERRORS,
              response_example=_order(status="accepted", kitchen_status="accepted", version=2)),
    Operation("POST", "/v1/orders/{order_id}/start-preparing", "The kitchen starts cooking", "orders",
              roles=_KITCHEN, response=v.OrderView, errors=_LIFECYCLE_ERRORS,
              response_example=_order(status="preparing", kitchen_status="preparing", version=3)),
    Operation("POST", "/v1/orders/{order_id}/ready", "The food is ready", "orders", roles=_KITCHEN,
              response=v.OrderView, errors=_LIFECYCLE_ERRORS,
              response_example=_order(status="ready", kitchen_status="ready", version=4, ready_at=_AT)),
    Operation("POST", "/v1/orders/{order_id}/ready-estimate", "Revise when the food will be ready", "orders",
              roles=_KITCHEN, body=s.ReadyRevision, response=v.OrderView,
              errors=(*_LIFECYCLE_ERRORS, 400, 413, 422), request_example={"ready_in_minutes": 8},
              response_example=_order(status="preparing", kitchen_status="preparing", version=4,
                                      ready_estimate_at="2026-12-03T12:08:00.000000Z")),
    Operation("PUT", "/v1/drivers/me", "Create or replace the driver's profile", "drivers", roles=(Role.DRIVER,),
              body=s.DriverProfileIn, response=v.DriverView, errors=(400, 401, 403, 413, 422),
              request_example={"vehicle": "bicycle", "capacity": 2},
              response_example={"id": "driver-9", "vehicle": "bicycle", "capacity": 2, "rating": None,
                                "updated_at": _AT}),
    Operation("GET", "/v1/drivers/me", "The driver's profile", "drivers", roles=(Role.DRIVER,),
              response=v.DriverView, errors=(401, 403, 404),
              response_example={"id": "driver-9", "vehicle": "bicycle", "capacity": 2, "rating": 4.8,
                                "updated_at": _AT}),
    Operation("GET", "/v1/admin/cells", "Every live cell's load, and Ray's nodes", "admin", roles=(Role.ADMIN,),
              response=v.AdminCells, errors=(401, 403, 409),
              response_example={"cells": [{"cell": "8826641b3ffffff", "pending_orders": 2, "open_offers": 1,
                                           "drivers": {"idle": 4, "en_route_pickup": 1}}],
                                "unanswered": [], "nodes": [{"node_id": "3f1c...", "address": "10.0.0.5",
                                                             "alive": True, "hexdispatch_cells": 1000.0}]}),
    Operation("GET", "/v1/admin/stats", "This front door's counters", "admin", roles=(Role.ADMIN,),
              response=v.AdminStats, errors=(401, 403, 409),
              response_example={"gateway": "gw-host-4242-a1b2c3", "pid": 4242, "gps_in": 120000,
                                "gps_fast": 119000, "drivers_connected": 800, "at": 1796299200.0}),
    Operation("GET", "/v1/ws/driver", "Driver websocket (upgrade; frames in docs/protocol.md)", "websockets",
              roles=(Role.DRIVER,), status=101, errors=(401, 403),
              description="Token as `?token=` or an `Authorization: Bearer` header. Msgpack or JSON frames."),
    Operation("GET", "/ops", "The live ops map page (it asks for an admin token for /v1/ws/ops)", "service",
              roles=(), media_type="text/html"),
    Operation("GET", "/ops/static/{path}", "The ops map's vendored assets", "service", roles=(),
              media_type="application/octet-stream", errors=(404,)),
    Operation("GET", "/v1/ws/ops", "Ops map websocket (upgrade; frames in docs/protocol.md)", "websockets",
              roles=(Role.ADMIN,), status=101, errors=(401, 403),
              description="Token as `?token=` or an `Authorization: Bearer` header. JSON frames."),
    Operation("GET", "/v1/ws/customer", "Customer websocket (upgrade; frames in docs/protocol.md)", "websockets",
              roles=(Role.CUSTOMER,), status=101, errors=(401, 403),
              description="Token as `?token=` or an `Authorization: Bearer` header. Msgpack or JSON frames."),
)


def route_operations(routes: list[BaseRoute]) -> list[tuple[str, str]]:
    """Every ``(METHOD, path)`` the routes answer (websockets as their ``GET`` upgrade; a mount as ``{path}``)."""
    found = []
    for route in routes:
        if isinstance(route, Route):
            found += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
        elif isinstance(route, WebSocketRoute):
            found.append(("GET", route.path))
        elif isinstance(route, Mount):
            found.append(("GET", route.path + "/{path}"))
    return found


class UndocumentedRoute(Exception):
    """A route without an operation in :data:`OPERATIONS` (or an operation without a route)."""


def openapi_document(routes: list[BaseRoute], version: str = "0.1.0") -> dict:
    """The OpenAPI 3.1 document of ``routes``; raises :class:`UndocumentedRoute` unless every route has exactly
    one operation and every operation a route."""
    by_key = {(op.method, op.path): op for op in OPERATIONS}
    served = route_operations(routes)
    missing = sorted(set(served) - by_key.keys())
    extra = sorted(by_key.keys() - set(served))
    if missing or extra:
        raise UndocumentedRoute(f"routes without an operation: {missing}; operations without a route: {extra}")
    models = sorted({m for op in OPERATIONS for m in (op.body, op.response) if m is not None} | {ErrorBody},
                    key=lambda m: m.__name__)
    refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    paths: dict = {}
    for method, path in served:
        paths.setdefault(path, {})[method.lower()] = _operation(by_key[(method, path)], refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "hexdispatch", "version": version,
                 "description": "Real-time food-delivery dispatch. Every refusal is a 4xx with "
                                "`{\"error\": {\"code\", \"message\"}}`. Tokens are JWTs (HS256) whose `role` "
                                "claim is one of customer, driver, restaurant, admin; each operation lists the "
                                "roles it admits."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                           "description": "`hexdispatch token ROLE SUB` mints one locally."}},
        },
    }


def _operation(op: Operation, refs: dict) -> dict:
    def ref(model) -> dict:
        return refs[(model, "validation")]

    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "integer", "minimum": 1, "maximum": s.MAX_ID}}
                  for name in _path_names(op.path)]
    if op.path.endswith("{path}"):
        parameters = [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}]
    if op.query is not None:
        schema = op.query.model_json_schema(mode="validation", ref_template=REF)
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            prop = json_schema_bounds({k: val for k, val in prop.items() if k != "title"})
            parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop,
                               **({"example": op.query_example[name]} if name in op.query_example else {})})
    parameters += [{"name": name, "in": "header", "required": required, "description": text,
                    "schema": {"type": "string", "maxLength": 200}} for name, text, required in op.headers]
    roles = [role.value for role in op.roles]
    description = op.description + ("" if op.public else f"\n\nRoles: {', '.join(roles)}.")
    doc: dict = {"summary": op.summary, "description": description.strip(), "tags": [op.tag],
                 "operationId": re.sub(r"[^a-z0-9]+", "_", f"{op.method} {op.path}".lower()).strip("_"),
                 "security": [] if op.public else [{"bearer": []}], "x-roles": roles}
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        content = {"schema": ref(op.body)}
        if op.request_example is not None:
            content["example"] = op.request_example
        doc["requestBody"] = {"required": not op.description.startswith("The body is optional"),
                              "content": {"application/json": content}}
    success: dict = {"description": {101: "switching protocols", 204: "done (no body)"}.get(op.status, "success")}
    if op.status not in (101, 204):
        schema = ref(op.response) if op.response is not None else _untyped(op.media_type)
        media: dict = {"schema": schema}
        if op.response_example is not None:
            media["example"] = op.response_example
        success["content"] = {op.media_type: media}
    responses = {str(op.status): success}
    for status in sorted(set(op.errors) | ({401} if not op.public else set()) | {500}):
        responses[str(status)] = {"description": ERROR_STATUS.get(status, "internal server error"),
                                  "content": {"application/json": {"schema": ref(ErrorBody)}}}
    doc["responses"] = responses
    return doc


#: Pydantic writes a ``Field``'s bounds under its own names when a validator runs before the type (the
#: ``*Param`` types of ``server.schemas``); JSON Schema's names for them.
_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def json_schema_bounds(schema):
    """``schema`` with pydantic's ``ge``/``le``/``gt``/``lt`` renamed to JSON Schema's keywords, at any depth."""
    if isinstance(schema, dict):
        return {_BOUNDS.get(key, key): json_schema_bounds(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [json_schema_bounds(item) for item in schema]
    return schema


def _untyped(media_type: str) -> dict:
    return {"type": "object"} if media_type == "application/json" else {"type": "string"}


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part != "{path}"]


# The README's examples ----------------------------------------------------------------------

README_START = "<!-- api-examples: generated by `python -m server.openapi --readme`; do not edit by hand -->"
README_END = "<!-- /api-examples -->"


def readme_examples() -> str:
    """One request and response example per operation, as Markdown (from :data:`OPERATIONS`), each call
    folded in a ``<details>`` block."""
    from urllib.parse import urlencode

    lines = [README_START, ""]
    for op in OPERATIONS:
        if op.public and op.response_example is None:
            continue
        path = op.path.replace("{restaurant_id}", "42").replace("{item_id}", "7").replace("{order_id}", "1001")
        if op.query_example:
            path += "?" + urlencode(op.query_example)
        roles = "no token" if op.public else ", ".join(role.value for role in op.roles)
        lines += ["<details>", f"<summary><code>{op.method} {op.path}</code>: {op.summary} ({roles})</summary>",
                  "", "```http", f"{op.method} {path}"]
        lines += [] if op.public else ["Authorization: Bearer <JWT>"]
        lines += [f"{name}: <key>" for name, _, _ in op.headers]
        if op.request_example is not None:
            lines += ["", compact_json(op.request_example)]
        lines.append("```")
        if op.status in (101, 204):
            answer = ("Answers `101 Switching Protocols`; frames: [docs/protocol.md](docs/protocol.md)."
                      if op.status == 101 else "Answers `204` with no body.")
            lines += ["", answer, "", "</details>", ""]
            continue
        lines += ["", f"`{op.status}`:", "", "```json", compact_json(op.response_example), "```", "", "</details>",
                  ""]
    lines.append(README_END)
    return "\n".join(lines)


def compact_json(value, indent: int = 0, width: int = 100) -> str:
    """``value`` as JSON, each object or array on one line when it fits in ``width``, else one member a line."""
    import json

    flat = json.dumps(value)
    if len(flat) + indent <= width or not isinstance(value, (dict, list)) or not value:
        return flat
    inner = " " * (indent + 2)
    if isinstance(value, dict):
        members = [f"{inner}{json.dumps(key)}: {compact_json(item, indent + 4 + len(key), width).lstrip()}"
                   for key, item in value.items()]
        return "{\n" + ",\n".join(members) + "\n" + " " * indent + "}"
    members = [inner + compact_json(item, indent + 2, width) for item in value]
    return "[\n" + ",\n".join(members) + "\n" + " " * indent + "]"


def rewrite_readme(readme: Path) -> bool:
    """Replace the README's generated examples with :func:`readme_examples`; True if it changed."""
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    updated = text[:start] + readme_examples() + text[end:]
    if updated != text:
        readme.write_text(updated)
    return updated != text


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        changed = rewrite_readme(Path(__file__).resolve().parent.parent / "README.md")
        print("README.md updated" if changed else "README.md already up to date")
    else:
        import json

        from server.app import routes

        print(json.dumps(openapi_document(routes()), indent=2))
