"""Every error leaves the server as JSON ``{"error": {"code", "message"}}`` with a 4xx status."""

from __future__ import annotations

import contextlib
import logging

import asyncpg
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from server.responses import JSONResponse
from store.errors import Conflict, Invalid, NotFound, StoreError

log = logging.getLogger("hexdispatch.errors")


class ApiError(Exception):
    """An error the client can act on: an HTTP status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str, details: object = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def error_body(code: str, message: str, details: object = None) -> dict:
    error: dict = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def validation_details(exc: ValidationError) -> list[dict]:
    """Pydantic errors reduced to what a client needs: where, and what is wrong."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "problem": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status)


#: The HTTP status of each refusal of the system of record.
STORE_STATUS = {NotFound: 404, Conflict: 409, Invalid: 422}


async def store_error(request: Request, exc: StoreError) -> JSONResponse:
    """A refusal from ``store``: its status by kind, its code and message as any API error."""
    status = next((code for kind, code in STORE_STATUS.items() if isinstance(exc, kind)), 409)
    return JSONResponse(error_body(exc.code, exc.message), status_code=status)


async def invalid_request(request: Request, exc: ValidationError) -> JSONResponse:
    details = validation_details(exc)
    first = details[0] if details else {"field": "body", "problem": "invalid"}
    message = f"{first['field']}: {first['problem']}"
    return JSONResponse(error_body("invalid_request", message, details), status_code=422)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


#: Postgres out of reach: refused, reset or timed-out connections, sessions cut by a restart or a shutdown
#: (class 08 and 57 errors), no connection slot left (53300). Retrying later may work. (Not every ``OSError``:
#: uvicorn reports a client that went away as one, and that is no outage.)
DATABASE_UNAVAILABLE = (ConnectionError, TimeoutError, asyncpg.PostgresConnectionError,
                        asyncpg.exceptions.OperatorInterventionError, asyncpg.TooManyConnectionsError)
#: Seconds a client is asked to wait before retrying a request Postgres could not serve.
RETRY_AFTER_S = 2
#: Websocket close code for "try again later" (the client backs off, as after 503).
CLOSE_TRY_AGAIN_LATER = 1013


async def database_unavailable(conn, exc: Exception) -> JSONResponse | None:
    """503 ``unavailable`` with ``Retry-After`` when Postgres could not be reached: nothing was done; retry.
    On a websocket: closed with 1013 (try again later), and the client resumes after its back-off."""
    if conn.scope["type"] == "websocket":
        log.warning("database unavailable on websocket %s: %r", conn.url.path, exc)
        with contextlib.suppress(Exception):  # the socket may already be gone
            await conn.close(CLOSE_TRY_AGAIN_LATER, "database unavailable; retry later")
        return None
    log.warning("database unavailable on %s %s: %r", conn.method, conn.url.path, exc)
    return JSONResponse(error_body("unavailable", "the database is unavailable; retry later"), status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_S)})


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal", "internal server error"), status_code=500)


EXCEPTION_HANDLERS = {
    ApiError: api_error,
    StoreError: store_error,
    ValidationError: invalid_request,
    HTTPException: http_error,
    **{kind: database_unavailable for kind in DATABASE_UNAVAILABLE},
    Exception: internal_error,
}
