"""Operator endpoints (admin role): the load of every cell, and this front door's counters.

``GET /v1/admin/cells`` asks every live cell actor (found by name in Ray's
``hexdispatch`` namespace) for its load, and lists the cluster's nodes with
the cell-hosting resource each offers; ``GET /v1/admin/stats`` is the
answering process's own gateway counters (behind a load balancer, each call
may reach a different process: the answer names it).
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import Request
from starlette.routing import Route

from server.api.common import caller
from server.auth import Role
from server.errors import ApiError
from server.responses import JSONResponse

log = logging.getLogger("hexdispatch.admin")

CELL_LOAD_TIMEOUT_S = 5.0


def _gateway(request: Request):
    gateway = request.app.state.gateway
    if gateway is None:
        raise ApiError(409, "dispatch_not_running", "live dispatch is not running on this server")
    return gateway


async def cells(request: Request) -> JSONResponse:
    caller(request, Role.ADMIN)
    _gateway(request)
    nodes = await asyncio.to_thread(ray_nodes, request.app.state.gateway.params.cell_resource)
    answered, unanswered = await cell_loads()
    return JSONResponse({"cells": answered, "unanswered": unanswered, "nodes": nodes})


async def cell_loads() -> tuple[list[dict], list[str]]:
    """Every live cell actor's load report (``CellActor.load``), by cell id, and the cells that did not answer
    within ``CELL_LOAD_TIMEOUT_S``."""
    from actors.cell import NAMESPACE, cell_handles

    handles = await asyncio.to_thread(cell_handles, NAMESPACE)
    return await ask_cells(handles, "load")


async def ask_cells(handles: dict[str, object], method: str, *args) -> tuple[list[dict], list[str]]:
    """``method(*args)`` of every cell actor in ``handles`` at once, each within ``CELL_LOAD_TIMEOUT_S``: the
    answers (sorted by cell) and the cells that did not answer (sorted)."""
    answers = await asyncio.gather(
        *(asyncio.wait_for(getattr(h, method).remote(*args), CELL_LOAD_TIMEOUT_S) for h in handles.values()),
        return_exceptions=True)
    answered, unanswered = [], []
    for cell_id, answer in zip(handles, answers):
        if isinstance(answer, BaseException):
            log.warning("cell %s did not answer %s: %r", cell_id, method, answer)
            unanswered.append(cell_id)
        else:
            answered.append(answer)
    answered.sort(key=lambda answer: answer["cell"])
    return answered, sorted(unanswered)


def ray_nodes(resource: str) -> list[dict]:
    """The cluster's nodes: id, address, alive, and how much of the cell-hosting ``resource`` each offers."""
    import ray

    return [{"node_id": node["NodeID"], "address": node["NodeManagerAddress"], "alive": node["Alive"],
             resource: node["Resources"].get(resource, 0.0) if node["Alive"] else 0.0}
            for node in ray.nodes()]


async def stats(request: Request) -> JSONResponse:
    caller(request, Role.ADMIN)
    return JSONResponse({**_gateway(request).snapshot(), **request.app.state.process_counters(), "at": time.time()})


ROUTES = [
    Route("/v1/admin/cells", cells, methods=["GET"]),
    Route("/v1/admin/stats", stats, methods=["GET"]),
]
