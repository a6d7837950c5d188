"""The composed :class:`Gateway`: its state, its lifecycle and its sockets' outboxes (see ``server.gateway``)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
import weakref
from typing import Callable

from server.broker import LocalBroker, RedisBroker
from server.gateway.cells import CellDirectory
from server.gateway.drivers import DriverSessions
from server.gateway.feed import StatusFeed
from server.gateway.gps import GpsBatcher
from server.gateway.orders import OrderIntake
from server.gateway.outbox import Outbox
from server.gateway.params import GatewayParams
from server.gateway.positions import PositionFanout

log = logging.getLogger("hexdispatch.gateway")

#: How long a starting front door waits for its status-event listener before serving anyway (seconds).
LISTEN_START_WAIT_S = 10.0


class Gateway(CellDirectory, GpsBatcher, DriverSessions, OrderIntake, StatusFeed, PositionFanout):
    """One front door's live side, composed of its jobs (one module each, each making its own state); what they
    share (parameters, broker, pool, counters, background tasks) is made here."""

    def __init__(self, dsn: str, pool, params: GatewayParams | None = None,
                 broker: LocalBroker | RedisBroker | None = None, replica=None):
        self.id = f"gw-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.dsn = dsn
        self.pool = pool
        self.params = params or GatewayParams()
        self.broker = broker if broker is not None else LocalBroker()
        self.tasks: set[asyncio.Task] = set()
        self.outboxes: weakref.WeakSet[Outbox] = weakref.WeakSet()  # every open socket's, for the age check
        self.stats = {"gps_in": 0, "gps_fast": 0, "gps_batches": 0, "status_out": 0, "positions_out": 0,
                      "gps_to_cell_ms": 0.0,  # the oldest fix of the last batch, received until the cell took it
                      "refused_implausible_jump": 0, "refused_outside_service_area": 0, "refused_cell_capacity": 0,
                      "cells_opened": 0, "cells_retired": 0,
                      "closed_behind": 0,  # sockets closed with 1013 for falling behind
                      "outbox_dropped_frames": 0, "positions_superseded": 0,
                      "frames_in_driver": 0, "frames_in_customer": 0, "frames_out_driver": 0,
                      "frames_out_customer": 0, "frames_in_admin": 0, "frames_out_admin": 0}
        #: The catalog replica (``server.catalog_replica``) the service area follows; None: no restaurants known.
        self.replica = replica
        self._outbox_checker: asyncio.Task | None = None
        self._init_cells()
        self._init_gps()
        self._init_drivers()
        self._init_feed()

    # Lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.listener.start()
        if not await self.listener.wait_connected(LISTEN_START_WAIT_S):
            log.warning("status events: not listening yet; followers catch up from order_events once it is")
        self.broker.subscribe("sessions", self._on_session)
        await self.broker.start()
        if self.replica is not None and self.params.service_area is None:
            self.replica.listeners.append(self._restaurants_changed)
            if self.replica.loaded_at is not None:
                self.area.replace(self.replica.positions())
        await self._count_cells()
        loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush_loop())
        self._census = loop.create_task(self._census_loop())
        self._outbox_checker = loop.create_task(self._check_outboxes())

    async def stop(self) -> None:
        for task in [self._flusher, self._census, self._outbox_checker, *self.pollers.values(), *self.tasks]:
            if task is not None:
                task.cancel()
        await self.broker.stop()
        await self.listener.stop()

    def snapshot(self) -> dict:
        """This front door's counters (the admin API's view of the process)."""
        return {"gateway": self.id, "pid": os.getpid(), **self.stats, "drivers_connected": len(self.drivers),
                "customers_connected": len({c for followers in self.customers.values() for c in followers}),
                "cells_polled": len(self.pollers), "cells_open": len(self.cells),
                "cells_in_deployment": len(self.census | self.cells.keys()), "max_cells": self.params.max_cells,
                "service_area": "configured" if self.params.service_area is not None else
                f"{len(self.area)} cells around the restaurants",
                "broker": type(self.broker).__name__,
                **({"broker_stats": self.broker.stats} if hasattr(self.broker, "stats") else {})}

    # Sockets' outboxes -------------------------------------------------------------------

    def outbox(self, encode: Callable[[dict], bytes | str], on_overflow: Callable[[], None]) -> Outbox:
        """A new socket's outbox, bounded by this gateway's limits; ``on_overflow`` closes the socket."""
        outbox = Outbox(encode, self.params.outbox_max_bytes, self.params.outbox_max_age_s, counts=self.stats)

        def overflowed() -> None:
            self.stats["closed_behind"] += 1
            on_overflow()

        outbox.on_overflow = overflowed
        self.outboxes.add(outbox)
        return outbox

    async def _check_outboxes(self) -> None:
        """Overflow every outbox whose oldest waiting frame is too old, even if nothing more comes to it."""
        while True:
            await asyncio.sleep(self.params.outbox_check_s)
            now = time.monotonic()
            for outbox in list(self.outboxes):
                outbox.check_age(now)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
