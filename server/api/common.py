"""What every endpoint needs: the caller, a validated body or query, ids from the path, cursors."""

from __future__ import annotations

import base64
import time
from typing import TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request

from server.auth import Principal, Role, bearer_token, require_role
from server.errors import ApiError
from server.schemas import PATH_ID

M = TypeVar("M", bound=BaseModel)


def caller(request: Request, *roles: Role) -> Principal:
    """The authenticated principal; restricted to ``roles`` when any are given."""
    principal = request.app.state.tokens.verify(bearer_token(request.headers.get("authorization")), time.time())
    return require_role(principal, *roles) if roles else principal


async def body(request: Request, model: type[M]) -> M:
    """The JSON body validated as ``model``; 413, 400 or 422 as JSON errors otherwise."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request bodies are limited to {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, "body_too_large", f"request bodies are limited to {limit} bytes")
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return model.model_validate(data)


def query(request: Request, model: type[M]) -> M:
    """The query string validated as ``model`` (a key given twice is refused)."""
    params = request.query_params
    repeated = sorted({k for k in params.keys() if len(params.getlist(k)) > 1})
    if repeated:
        raise ApiError(422, "invalid_request", f"{repeated[0]}: given more than once")
    return model.model_validate(dict(params))


def path_id(request: Request, name: str, what: str) -> int:
    """A positive 64-bit id from the path, in ASCII digits; 404 for anything else (it cannot exist)."""
    try:
        return PATH_ID.validate_python(request.path_params[name])
    except ValidationError:
        raise ApiError(404, "not_found", f"{what} not found") from None


def encode_cursor(*values: object) -> str:
    """An opaque pagination cursor holding ``values``."""
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str, values: TypeAdapter) -> tuple:
    """The values in a cursor made by :func:`encode_cursor`, checked by ``values`` (a tuple's adapter from
    ``server.schemas``); 422 if it was tampered with."""
    try:
        return values.validate_json(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), strict=True)
    except (ValueError, TypeError):  # ValidationError is a ValueError, as is binascii.Error
        raise ApiError(422, "invalid_cursor", "the cursor is not one this server issued") from None


def page(items: list, limit: int, cursor_of) -> dict:
    """A page of at most ``limit`` items (``items`` holds one extra when there is a next page)."""
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_cursor": cursor_of(items[-1]) if more else None}
