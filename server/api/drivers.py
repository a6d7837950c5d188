"""A driver's own profile (vehicle and capacity), read by dispatch."""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from server.api.common import body, caller
from server.auth import Role
from server.errors import not_found
from server.responses import JSONResponse
from server.schemas import DriverProfileIn

DRIVER_COLUMNS = "id, vehicle, capacity, rating, created_at, updated_at"


def driver_view(row) -> dict:
    return {
        "id": row["id"],
        "vehicle": row["vehicle"],
        "capacity": row["capacity"],
        "rating": float(row["rating"]) if row["rating"] is not None else None,
        "updated_at": row["updated_at"],
    }


async def put_me(request: Request) -> JSONResponse:
    principal = caller(request, Role.DRIVER)
    data = await body(request, DriverProfileIn)
    async with request.app.state.pool.acquire() as conn:
        row = await conn.fetchrow(
            f"""INSERT INTO drivers (id, vehicle, capacity) VALUES ($1, $2, $3)
                ON CONFLICT (id) DO UPDATE SET vehicle = excluded.vehicle, capacity = excluded.capacity,
                    updated_at = now()
                RETURNING {DRIVER_COLUMNS}""",
            principal.sub, data.vehicle, data.capacity,
        )
    return JSONResponse(driver_view(row))


async def get_me(request: Request) -> JSONResponse:
    principal = caller(request, Role.DRIVER)
    async with request.app.state.pool.acquire() as conn:
        row = await conn.fetchrow(f"SELECT {DRIVER_COLUMNS} FROM drivers WHERE id = $1", principal.sub)
    if row is None:
        raise not_found("driver profile")
    return JSONResponse(driver_view(row))


ROUTES = [
    Route("/v1/drivers/me", put_me, methods=["PUT"]),
    Route("/v1/drivers/me", get_me, methods=["GET"]),
]
