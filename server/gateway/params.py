"""The knobs of a front door's live side (one :class:`GatewayParams` per process, from ``server.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.cell import DEFAULT_CELL_RES
from dispatch.cell import CellParams
from dispatch.movement import MovementParams
from dispatch.service_area import Region


@dataclass(frozen=True)
class GatewayParams:
    cell_res: int = DEFAULT_CELL_RES
    """H3 resolution of the cell actors (see ``actors.cell``); every front door must agree on it."""
    gps_flush_s: float = 0.1
    """How often buffered GPS fixes are pushed to their cells (one Ray call per cell)."""
    poll_timeout_s: float = 5.0
    """How long one long-poll of a cell waits for messages."""
    position_interval_s: float = 1.0
    """Least time between two driver positions sent for one order."""
    handover_retry_s: float = 5.0
    """Least time between two attempts to hand a busy driver over."""
    borrowed_hold_s: float = 30.0
    """A driver borrowed by a neighbouring cell stays there at least this long (no hand-over back)."""
    outbox_max_bytes: int = 256 * 1024
    """Bytes of frames queued for one socket, not yet handed to it, before it is closed with 1013 (try again
    later: the client reconnects and resumes with ``after_seq``)."""
    outbox_max_age_s: float = 30.0
    """Age of a socket's oldest frame not yet handed to it before it is closed with 1013, whether or not
    more frames come (a reader that stopped reading blocks its writer in flow control)."""
    outbox_check_s: float = 1.0
    """How often the outboxes are checked for frames older than ``outbox_max_age_s``."""
    close_grace_s: float = 2.0
    """How long a server-side close may wait for its close frame to go out before the connection is aborted."""
    cell_tick_s: float = 0.25
    """Matching tick of each cell actor."""
    cell: CellParams = field(default_factory=CellParams)
    cell_resource: str = "cell_host"
    """Custom Ray resource of the nodes that may host cells (``ray_cluster.yaml``); used when the cluster has it."""
    max_cells: int = 80
    """Most cell actors the deployment runs. Each is a process of about 180 MB: 80 take about 14 GiB, which
    leaves a 24 GiB machine room for the front doors, Postgres and Ray. Past it, new cells are refused
    (``cell_capacity``)."""
    service_area: Region | None = None
    """The cells the deployment serves; None: derived from the restaurants (``dispatch.service_area``)."""
    service_margin_m: float = 3000.0
    """How far beyond a restaurant's delivery radius the derived service area reaches (drivers approach)."""
    movement: MovementParams = field(default_factory=MovementParams)
    """The fastest plausible move between two fixes of a driver (``dispatch.movement``)."""
    census_s: float = 5.0
    """How often the deployment's cell actors are counted (Ray's named actors) for ``max_cells``."""
    reopen_timeout_s: float = 30.0
    promise_timeout_s: float = 2.0
    """How long an order placement waits for its cell's delivery promise. Past it, the order is placed and
    dispatched all the same, without a promise in the response; its first estimate follows as a status event."""
    """How long a call keeps re-opening a cell that retired under it before giving up."""
    eta_board_s: float = 5.0
    """How often the front door asks every cell of the deployment for its couriers' availability, which
    delivery-time quotes at search are computed from (``server.gateway.eta_board``)."""
    eta_basis_timeout_s: float = 2.0
    """How long one cell may take to answer that; a cell that does not is left out until it does."""
