"""``hexdispatch bench fuzz``: the input fuzz properties of ``tests/fuzz``, run for as long as asked.

Requests and frames are generated from the JSON schemas of the very pydantic
models the server validates with (``server.schemas``, ``wire``),
then mutated: wrong types, huge, negative and non-ASCII numbers, U+0000,
oversized strings, missing and extra fields, random bytes, random JSON and
msgpack. The properties:

* HTTP (every route of the app's router, in process): never a 5xx; every
  error is JSON ``{"error": {"code", "message"}}``.
* Websockets (both endpoints, on a live server): every frame the protocol
  refuses gets an error frame, the socket stays open and answers a ping, and
  only repeated abuse closes it, with 1008 (never 1011).

``tests/fuzz`` runs them with a bounded number of examples inside ``make
test``; this command runs them longer, against an app of its own on a fresh
database (``--database-url`` / ``DATABASE_URL``, else an embedded Postgres)
with a local Ray, and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import quote

import msgpack
import orjson
from hypothesis import HealthCheck, given, settings, strategies as st
from pydantic import TypeAdapter

import wire as p
from server import schemas as s
from server.auth import mint_token
from server.cli import parser_for
from server.openapi import OPERATIONS

#: Inputs of each route beyond its path: (body model, query model), as the OpenAPI document describes them.
#: Routes absent here take neither.
ROUTE_INPUTS: dict[tuple[str, str], tuple[type | None, type | None]] = {
    (op.method, op.path): (op.body, op.query) for op in OPERATIONS if op.body is not None or op.query is not None
}
#: The websocket endpoints and the messages each validates with.
SOCKETS: dict[str, tuple[str, TypeAdapter]] = {
    "/v1/ws/driver": ("driver", p.DRIVER_MESSAGES),
    "/v1/ws/customer": ("customer", p.CUSTOMER_MESSAGES),
}
#: Frames of one conversation: with the closing ping, within the burst of non-GPS messages a principal may send.
MAX_CONVERSATION = 15
REPLY_TIMEOUT_S = 30.0
_PATH_PARAM = re.compile(r"{(\w+)}")


# Strategies from JSON schemas ---------------------------------------------------------------------


def from_schema(schema: dict, defs: dict | None = None) -> st.SearchStrategy:
    """Values valid under ``schema``: the subset of JSON Schema that pydantic writes for our models.

    (hypothesis-jsonschema would do this, but its last release fails on current hypothesis.)
    """
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for union in ("anyOf", "oneOf"):
        if union in schema:
            return st.one_of([from_schema(option, defs) for option in schema[union]])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=False, allow_infinity=False) | st.integers(
            None if low is None else math.ceil(low), None if high is None else math.floor(high))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "string":
        return _strings(schema)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), defs), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 5), 5))
    if kind == "object":
        return _objects(schema, defs)
    return json_values()


def _strings(schema: dict) -> st.SearchStrategy:
    low, high = schema.get("minLength", 0), min(schema.get("maxLength", 50), 200)
    pattern = schema.get("pattern")
    if pattern is None or pattern == "^[^\\x00]*$":  # server.schemas.Text: anything but U+0000
        return st.text(st.characters(exclude_characters="\x00"), min_size=low, max_size=high)
    return st.from_regex(pattern, fullmatch=True).filter(lambda text: low <= len(text) <= high)


def _objects(schema: dict, defs: dict) -> st.SearchStrategy:
    properties = schema.get("properties")
    if properties is None:  # a map: keys by propertyNames, values by its one pattern
        values = next(iter(schema.get("patternProperties", {}).values()), {})
        keys = _strings({"type": "string", **schema.get("propertyNames", {})})
        return st.dictionaries(keys, from_schema(values, defs), max_size=3)
    required = set(schema.get("required", ()))
    return st.fixed_dictionaries(
        {name: from_schema(sub, defs) for name, sub in properties.items() if name in required},
        optional={name: from_schema(sub, defs) for name, sub in properties.items() if name not in required},
    )


def json_values() -> st.SearchStrategy:
    """Any JSON-like value, nested a little."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=8), inner, max_size=3), max_leaves=8)


def weighted(choices: dict[st.SearchStrategy, int]) -> st.SearchStrategy:
    """One of the strategies, each chosen in proportion to its weight (``one_of`` would take them alike)."""
    return st.sampled_from([strategy for strategy, weight in choices.items() for _ in range(weight)]).flatmap(
        lambda strategy: strategy)


#: Values that have broken servers: past int4 and int8, non-ASCII digits, U+0000, numbers as text, huge text.
WEIRD = st.one_of(
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, -1, 0, 1e308, -0.0, 1.5]),
    st.integers(), st.floats(), st.booleans(), st.none(),
    st.sampled_from(["١", "²", "١٢٣", "\x00", "a\x00b", "41.8", "true", "yes", "nan", "inf", "1e400", "", " ",
                     "x" * 5000, "\u202e", "😀"]),
    st.text(max_size=10), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                max_size=2),
)


def _resolved(schema: dict, defs: dict) -> dict:
    return defs[schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema else schema


def _field_schema(schema: dict, value: dict, key: str) -> dict:
    """The schema of ``value[key]``, ``value`` being valid under ``schema`` (a model's, or a union of models)."""
    defs = schema.get("$defs", {})
    options = [_resolved(option, defs) for option in schema.get("oneOf", schema.get("anyOf", [schema]))]
    for option in options:
        kind = option.get("properties", {}).get("type", {}).get("const")
        if key in option.get("properties", {}) and kind in (None, value.get("type")):
            return _resolved(option["properties"][key], defs)
    return {}


def past_the_bounds(schema: dict) -> list:
    """Numbers just past (and at) the bounds a field's schema gives: where ranges and column types break."""
    edges = []
    for option in schema.get("anyOf", [schema]):
        step = 1 if option.get("type") == "integer" else 1e-6
        if "minimum" in option:
            edges += [option["minimum"], option["minimum"] - step]
        if "maximum" in option:
            edges += [option["maximum"], option["maximum"] + step]
    return edges


def _every_field(schema: dict, defs: dict) -> dict:
    """``schema`` with every property required: a value to mutate has all its fields."""
    schema = _resolved(schema, defs)
    if "properties" in schema:
        return {**schema, "required": list(schema["properties"])}
    for union in ("oneOf", "anyOf"):
        if union in schema:
            return {**schema, union: [_every_field(option, defs) for option in schema[union]]}
    return schema


@st.composite
def mutated(draw, schema: dict) -> object:
    """A value valid under ``schema`` made wrong: its numbers at or just past their bounds, or one field of a
    weird value or type, dropped, or an extra field."""
    value = draw(from_schema(_every_field(schema, schema.get("$defs", {})), schema.get("$defs", {})))
    if not isinstance(value, dict) or not value:
        return draw(WEIRD)
    value = dict(value)
    edges = {k: past_the_bounds(_field_schema(schema, value, k)) for k in value}
    how = draw(st.sampled_from(["edges", "edges", "weird", "weird", "drop", "extra"] if any(edges.values()) else
                               ["weird", "weird", "drop", "extra"]))
    key = draw(st.sampled_from(sorted(value)))
    if how == "edges":
        value.update({k: draw(st.sampled_from(e)) for k, e in edges.items() if e})
    elif how == "weird":
        value[key] = draw(WEIRD)
    elif how == "drop":
        del value[key]
    else:
        value[draw(st.sampled_from(["extra", "id", "type", key + "_", "__proto__"]))] = draw(WEIRD)
    return value


def inputs_of(schema: dict) -> st.SearchStrategy:
    """Inputs for a model of JSON schema ``schema``: valid ones, mutated ones (most) and arbitrary JSON."""
    return weighted({from_schema(schema): 2, mutated(schema): 4, json_values(): 1})


# HTTP -------------------------------------------------------------------------------------------------


@dataclass
class World:
    """Rows the fuzz can aim at: a kitchen, its item, a customer's order."""

    owner: str
    customer: str
    restaurant_id: int
    item_id: int
    order_id: int


@dataclass
class HttpCase:
    method: str
    path: str
    caller: str | None
    query: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None
    headers: dict[str, bytes] = field(default_factory=dict)


def http_routes(routes: list) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route among ``routes`` (an app's ``router.routes``)."""
    return [(method, route.path) for route in routes
            for method in sorted(getattr(route, "methods", None) or ()) if method != "HEAD"]


def _path_value(world: World, name: str) -> st.SearchStrategy:
    known = {"restaurant_id": world.restaurant_id, "item_id": world.item_id, "order_id": world.order_id}.get(name, 1)
    return weighted({st.just(str(known)): 4, st.integers(1, s.INT8_MAX).map(str): 1, WEIRD.map(str): 1,
                     st.text(min_size=1, max_size=20): 1}).map(lambda text: quote(text, safe="") or "%20")


def _query_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def _query(model: type | None) -> st.SearchStrategy:
    values = (inputs_of(model.model_json_schema()) if model is not None
              else st.dictionaries(st.text(max_size=8), WEIRD, max_size=2))
    pairs = values.map(lambda v: [(str(k), _query_text(x)) for k, x in v.items() if x is not None]
                       if isinstance(v, dict) else [("q", _query_text(v))])
    return st.one_of(pairs, pairs.map(lambda ps: ps + ps[:1]))  # sometimes a key twice


def _body(model: type | None) -> st.SearchStrategy:
    encoded = (inputs_of(model.model_json_schema()) if model is not None else json_values()).map(
        lambda v: json.dumps(v, default=str).encode())
    raw = st.binary(max_size=64) | st.just(b"{" * 2000) | st.just(b'{"name": "' + b"x" * 70_000 + b'"}')
    return st.one_of(encoded, encoded, encoded, raw, st.none())


#: Who calls, by weight: mostly callers who get past authentication and may see the world's rows.
CALLERS = {"admin": 3, "owner": 3, "world-customer": 3, "customer": 1, "driver": 1, "restaurant": 1, None: 1,
           "forged": 1, "expired": 1, "garbage": 1}


@st.composite
def http_cases(draw, routes: list[tuple[str, str]], world: World) -> HttpCase:
    """A request to one of ``routes``, built from its models and mutated."""
    method, template = draw(st.sampled_from(routes))
    body_model, query_model = ROUTE_INPUTS.get((method, template), (None, None))
    path = _PATH_PARAM.sub(lambda m: draw(_path_value(world, m.group(1))), template)
    caller = draw(weighted({st.just(name): weight for name, weight in CALLERS.items()}))
    case = HttpCase(method, path, caller, draw(_query(query_model)))
    if method in ("POST", "PATCH", "PUT", "DELETE"):
        case.body = draw(_body(body_model))
    if (method, template) == ("POST", "/v1/orders") and draw(st.booleans()):
        case.headers["Idempotency-Key"] = draw(st.text(st.characters(max_codepoint=255), max_size=300)).encode("latin-1")
    return case


def bearer(secret: str, world: World, caller: str | None) -> dict[str, str]:
    """The Authorization header of a caller of :data:`CALLERS`."""
    now = int(time.time())
    subjects = {"owner": ("restaurant", world.owner), "world-customer": ("customer", world.customer)}
    if caller is None:
        return {}
    if caller == "garbage":
        return {"authorization": "Bearer not.a.jwt"}
    if caller == "forged":
        token = mint_token("another-secret-of-at-least-32-bytes-xx", "admin", "x", now=now, ttl_s=60)
    elif caller == "expired":
        token = mint_token(secret, "admin", "x", now=now - 7200, ttl_s=60)
    else:
        role, sub = subjects.get(caller, (caller, f"fuzz-{caller}-{uuid.uuid4().hex[:6]}"))
        token = mint_token(secret, role, sub, now=now, ttl_s=3600)
    return {"authorization": f"Bearer {token}"}


async def check_http(client, secret: str, world: World, case: HttpCase) -> str:
    """Send ``case``; assert never a 5xx and every error as JSON ``{"error": {"code", "message"}}``."""
    headers = {**bearer(secret, world, case.caller), **case.headers}
    if case.body is not None:
        headers["content-type"] = "application/json"
    response = await client.request(case.method, case.path, params=case.query, content=case.body, headers=headers)
    status = response.status_code
    assert status < 500, f"{case}: {status} {response.text[:300]}"
    if status >= 400:
        try:
            error = orjson.loads(response.content)["error"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise AssertionError(f"{case}: {status} without a JSON error: {response.text[:300]}") from None
        assert isinstance(error.get("code"), str) and error["code"], (case, error)
        assert isinstance(error.get("message"), str) and error["message"], (case, error)
        assert set(error) <= {"code", "message", "details"}, (case, error)
    return str(status)


async def make_world(client, secret: str) -> World:
    """A kitchen with one item and one order placed by a customer, through the API itself."""
    world = World(owner=f"fuzz-kitchen-{uuid.uuid4().hex[:6]}", customer=f"fuzz-customer-{uuid.uuid4().hex[:6]}",
                  restaurant_id=0, item_id=0, order_id=0)

    async def call(method, path, caller, body, **headers) -> dict:
        r = await client.request(method, path, json=body, headers={**bearer(secret, world, caller), **headers})
        assert r.status_code in (200, 201), r.text
        return r.json()

    restaurant = await call("POST", "/v1/restaurants", "owner", {
        "name": "Fuzz Kitchen", "address": "1 Fuzz St", "latitude": 41.88, "longitude": -87.63})
    world.restaurant_id = restaurant["id"]
    world.item_id = (await call("POST", f"/v1/restaurants/{world.restaurant_id}/menu/items", "owner",
                                {"name": "Pie", "price_cents": 500}))["id"]
    world.order_id = (await call("POST", "/v1/orders", "world-customer", {
        "restaurant_id": world.restaurant_id, "items": [{"item_id": world.item_id}],
        "dropoff": {"lat": 41.881, "lng": -87.631}}, **{"Idempotency-Key": "fuzz-world"}))["id"]
    return world


# Websockets -------------------------------------------------------------------------------------------


#: Stands for the order of the socket's own customer in a generated message (known only once it is placed).
OWN_ORDER = "<own order>"


@dataclass
class SocketCase:
    path: str
    #: Raw frames, or (message, as JSON text?) to encode once the own order is known.
    frames: list[bytes | str | tuple[object, bool]]
    abuse: bool = False

    def encoded(self, own_order: int) -> list[bytes | str]:
        return [encode_frame(_with_order(f[0], own_order), f[1]) if isinstance(f, tuple) else f for f in self.frames]


def _with_order(value, own_order: int):
    if isinstance(value, dict) and value.get("order_id") == OWN_ORDER:
        return {**value, "order_id": own_order}
    return value


def encode_frame(value, as_text: bool) -> bytes | str:
    """``value`` as a frame: JSON text, or msgpack (JSON text when msgpack cannot hold it)."""
    if not as_text:
        with contextlib.suppress(Exception):
            return msgpack.packb(value, use_bin_type=True)
    return json.dumps(value, default=str)


@st.composite
def _aimed(draw, values: st.SearchStrategy) -> object:
    """A message, often about the socket's own order (a random id is rarely anyone's)."""
    value = draw(values)
    if isinstance(value, dict) and "order_id" in value and draw(st.booleans()):
        return {**value, "order_id": OWN_ORDER}
    return value


def _at(spot: tuple[float, float]):
    """Moves a fix with a valid position to ``spot``: random places would start a cell actor each, all over the
    globe. Fixes with invalid positions keep them."""
    def move(value):
        if isinstance(value, dict) and value.get("type") == "gps":
            lat, lng = value.get("lat"), value.get("lng")
            if type(lat) in (int, float) and type(lng) in (int, float) and abs(lat) <= 90 and abs(lng) <= 180:
                return {**value, "lat": spot[0], "lng": spot[1]}
        return value
    return move


def socket_cases(path: str, spot: tuple[float, float]) -> st.SearchStrategy:
    """Conversations with one endpoint (frames from its messages' schema, mutated, or garbage), and floods of
    refused frames."""
    schema = SOCKETS[path][1].json_schema()
    values = _aimed(st.one_of(from_schema(schema), inputs_of(schema)).map(_at(spot)))
    messages = st.tuples(values, st.booleans())
    frames = weighted({messages: 8, st.binary(max_size=40): 1, st.text(max_size=40): 1,
                       values.map(lambda v: encode_frame({"pad": "x" * 5000, "value": v}, False)): 1})
    garbage = st.one_of(st.binary(max_size=40).map(lambda b: b"\xc1" + b), st.text(max_size=40).map(lambda t: "{" + t))
    limit = p.AbuseMeter().limit
    conversations = st.lists(frames, max_size=MAX_CONVERSATION).map(lambda fs: SocketCase(path, fs))
    floods = st.lists(garbage, min_size=limit + 1, max_size=limit + 10).map(lambda fs: SocketCase(path, fs, abuse=True))
    return weighted({conversations: 9, floods: 1})


def _read(frame: bytes | str) -> dict:
    message = msgpack.unpackb(frame, raw=False) if isinstance(frame, bytes) else orjson.loads(frame)
    assert isinstance(message, dict) and isinstance(message.get("type"), str), message
    if message["type"] == "error":
        assert isinstance(message.get("code"), str) and message["code"], message
        assert isinstance(message.get("message"), str) and message["message"], message
    return message


async def check_socket(base_url: str, secret: str, world: World, case: SocketCase) -> str:
    """Send ``case``'s frames and a closing ping; assert an error frame for every refused frame before the closing
    ping's pong, or for a flood of refused frames a close with 1008, never another close.

    A customer first places an order of its own at the world's kitchen, which its messages may name.
    """
    import httpx
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    role, messages = SOCKETS[case.path]
    sub = f"fuzz-{role}-{uuid.uuid4().hex[:8]}"
    token = mint_token(secret, role, sub, now=int(time.time()), ttl_s=600)
    own_order = world.order_id
    if role == "customer":
        async with httpx.AsyncClient(base_url=base_url, timeout=REPLY_TIMEOUT_S) as client:
            r = await client.post("/v1/orders", headers={"authorization": f"Bearer {token}", "Idempotency-Key": sub},
                                  json={"restaurant_id": world.restaurant_id, "items": [{"item_id": world.item_id}],
                                        "dropoff": {"lat": 41.881, "lng": -87.631}})
            assert r.status_code == 201, r.text
            own_order = r.json()["id"]
    frames = case.encoded(own_order)
    refused = 0
    for frame in frames:
        try:
            p.decode(frame, messages)
        except p.ProtocolError:
            refused += 1
    # Frames are answered in order, so the closing ping's pong comes after every other answer. Its id is one no
    # generated frame carries: a driver's frame repeating an earlier frame's id gets that frame's answer again
    # (docs/protocol.md, client message ids), so counting pongs would stop early or wait forever.
    closing = f"fuzz-closing-{uuid.uuid4().hex}"
    url = base_url.replace("http", "ws", 1) + f"{case.path}?token={token}"
    errors, closed = 0, None
    async with connect(url, open_timeout=REPLY_TIMEOUT_S, max_size=2**20) as socket:
        try:
            for frame in [*frames, msgpack.packb({"type": "ping", "id": closing})]:
                await socket.send(frame)
            while True:
                message = _read(await asyncio.wait_for(socket.recv(), REPLY_TIMEOUT_S))
                errors += message["type"] == "error"
                if message["type"] == "pong" and message.get("re") == closing:
                    break
        except ConnectionClosed as exc:
            closed = exc.rcvd.code if exc.rcvd is not None else 1006  # no close frame: the connection was dropped
    if case.abuse:
        assert closed == p.Close.POLICY_VIOLATION and errors >= 1, (closed, errors, case)
        return "closed 1008"
    assert closed is None, f"closed with {closed} after {len(case.frames)} frames ({refused} refused): {case}"
    assert errors >= refused, f"{errors} error frames for {refused} refused frames: {case}"
    return "answered"


# Running a property -------------------------------------------------------------------------------


def run_property(strategy: st.SearchStrategy, check: Callable[[object], Awaitable[str]],
                 run: Callable[[Awaitable], str], *, examples: int, deadline_s: float | None = None,
                 on_example: Callable[[], None] | None = None) -> Counter:
    """Run ``check`` on ``examples`` cases of ``strategy`` (each coroutine through ``run``); the outcomes'
    tally. A failing case is shrunk and raised by hypothesis."""
    tally: Counter = Counter()

    @settings(max_examples=examples, database=None, print_blob=True, suppress_health_check=list(HealthCheck),
              deadline=None if deadline_s is None else dt.timedelta(seconds=deadline_s))
    @given(strategy)
    def holds(case):
        tally[run(check(case))] += 1
        if on_example is not None:
            on_example()

    holds()
    return tally


# Command line -----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = parser_for("hexdispatch bench fuzz", __doc__)
    parser.add_argument("--examples", type=int, default=2000, help="examples of each property")
    parser.add_argument("--only", choices=["http", "ws"], help="run only the HTTP or only the websocket properties")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="Postgres where a fresh database is created (and dropped); default DATABASE_URL, "
                             "else an embedded Postgres")
    return parser.parse_args(argv)


@contextlib.contextmanager
def local_server(database_url: str | None, home: str, use_ray: bool):
    """The app on a fresh database, served by uvicorn on a free port in this thread's event loop, with a local
    Ray when ``use_ray`` (live dispatch, which the websockets need); yields (loop, app, base URL, JWT secret)."""
    import secrets as token_secrets
    import socket

    import uvicorn

    from bench.catalog import fresh_database
    from server.app import create_app
    from server.config import Settings
    from server.serve import WEBSOCKET_OPTIONS

    with contextlib.ExitStack() as stack:
        dsn = stack.enter_context(fresh_database(database_url, keep=False)) if database_url else None
        secret = token_secrets.token_hex(32)
        app = create_app(Settings.from_env(database_url=dsn, ray_address=os.environ.get("RAY_ADDRESS"),
                                           home=Path(home), jwt_secret=secret, use_ray=use_ray))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="on", **WEBSOCKET_OPTIONS))
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        task = loop.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            loop.run_until_complete(asyncio.sleep(0.05))
        try:
            yield loop, app, f"http://127.0.0.1:{port}", secret
        finally:
            server.should_exit = True
            loop.run_until_complete(asyncio.wait_for(task, 60))


def main(argv: list[str]) -> int:
    """Run the properties ``--examples`` times each; print a summary; 1 if one fails."""
    import httpx
    from tqdm import tqdm

    args = parse_args(argv)
    wanted = [name for name in ("http", *SOCKETS) if args.only in (None, "ws" if name in SOCKETS else name)]
    started, failures, summary = time.monotonic(), 0, {}
    with tempfile.TemporaryDirectory(prefix="hexdispatch-fuzz-") as home, \
            local_server(args.database_url, home, use_ray=args.only != "http") as (loop, app, url, secret):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                   base_url="http://hexdispatch.fuzz", timeout=REPLY_TIMEOUT_S)
        spot = (41.88, -87.63)

        def property_of(name: str, world: World):
            if name == "http":
                return (http_cases(http_routes(app.router.routes), world),
                        lambda case: check_http(client, secret, world, case))
            return socket_cases(name, spot), lambda case: check_socket(url, secret, world, case)

        for name in wanted:
            # A world of its own for each property: the HTTP fuzz may close its kitchen or delete its item.
            strategy, check = property_of(name, loop.run_until_complete(make_world(client, secret)))
            with tqdm(total=args.examples, desc=name, unit="ex", disable=not sys.stderr.isatty()) as bar:
                began = time.monotonic()
                try:
                    tally = run_property(strategy, check, loop.run_until_complete, examples=args.examples,
                                         on_example=bar.update)
                    summary[name] = {"outcomes": dict(sorted(tally.items())), "seconds": time.monotonic() - began}
                except Exception as exc:  # hypothesis has printed the shrunk case
                    failures += 1
                    summary[name] = {"failed": f"{type(exc).__name__}: {str(exc)[:2000]}"}
        healthy = loop.run_until_complete(client.get("/v1/health")).status_code == 200
        loop.run_until_complete(client.aclose())
    print(f"fuzz: {args.examples} examples per property, {time.monotonic() - started:.0f} s in all")
    for name, result in summary.items():
        if "failed" in result:
            print(f"  {name}: FAILED {result['failed']}")
        else:
            outcomes = ", ".join(f"{k}: {v}" for k, v in result["outcomes"].items())
            print(f"  {name}: held ({result['seconds']:.0f} s; {outcomes})")
    print(f"  server healthy afterwards: {healthy}")
    return 1 if failures or not healthy else 0
