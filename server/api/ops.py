"""The live ops map: the page at ``/ops``, its vendored assets, and the feed behind ``/v1/ws/ops``.

The page is static (no data in it: it asks for an admin token, or takes
``?token=``) and draws everything itself on a canvas; its data comes over the
admin-only websocket ``/v1/ws/ops`` (``server.ws``). The :class:`OpsFeed` of a
front door asks every cell actor for its view once per ``interval_s`` while
at least one viewer is connected (one Ray call per cell, whatever the number
of viewers or drivers), and sends each viewer the frame of its viewport
(``dispatch.opsmap``), latest-wins: a slow viewer skips frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from server.api.admin import ask_cells
from server.gateway import Outbox
from dispatch.opsmap import MAX_DRIVERS_PER_CELL, MAX_DRIVERS_PER_FRAME, Viewport, compose_frame

log = logging.getLogger("hexdispatch.ops")

STATIC_PACKAGE = ("server", "static/ops")


class OpsFeed:
    """Frames for this front door's ops map viewers, computed from one round of cell calls per ``interval_s``."""

    def __init__(self, interval_s: float = 1.0, handles_every_s: float = 5.0,
                 max_drivers_per_cell: int = MAX_DRIVERS_PER_CELL, max_drivers_per_frame: int = MAX_DRIVERS_PER_FRAME):
        self.interval_s = interval_s
        self.handles_every_s = handles_every_s
        self.max_drivers_per_cell = max_drivers_per_cell
        self.max_drivers_per_frame = max_drivers_per_frame
        self.viewers: dict[Outbox, Viewport | None] = {}
        self.rounds = 0
        self.frames_sent = 0
        self._latest: tuple[list[dict], list[str], float] | None = None
        self._handles: tuple[float, dict] = (float("-inf"), {})
        self._task: asyncio.Task | None = None

    def watch(self, outbox: Outbox) -> None:
        """Send frames to ``outbox`` from now on (the whole map until it names a viewport)."""
        self.viewers[outbox] = None
        if self._latest is not None:
            self._send(outbox)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def look_at(self, outbox: Outbox, viewport: Viewport) -> None:
        """The viewer behind ``outbox`` now shows ``viewport``: its next frame (sent at once) is of it."""
        if outbox in self.viewers:
            self.viewers[outbox] = viewport
            if self._latest is not None:
                self._send(outbox)

    def leave(self, outbox: Outbox) -> None:
        """No more frames to ``outbox``; the rounds stop with the last viewer."""
        self.viewers.pop(outbox, None)
        if not self.viewers and self._task is not None:
            self._task.cancel()
            self._task = None
            self._latest = None

    @property
    def running(self) -> bool:
        """Whether rounds of cell calls are going on (only while someone watches)."""
        return self._task is not None and not self._task.done()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _send(self, outbox: Outbox) -> None:
        views, unanswered, at = self._latest
        outbox.send_latest("frame", compose_frame(views, self.viewers[outbox], at, unanswered=unanswered,
                                                  max_drivers=self.max_drivers_per_frame).to_dict())
        self.frames_sent += 1

    async def _run(self) -> None:
        while self.viewers:
            started = time.monotonic()
            try:
                handles = await self._cell_handles()
                views, unanswered = await ask_cells(handles, "ops_view", self.max_drivers_per_cell)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("ops map: asking the cells failed; trying again", exc_info=True)
            else:
                if unanswered:
                    self._handles = (float("-inf"), {})  # a cell gone (retired): look its handles up anew
                self._latest = (views, unanswered, time.time())
                self.rounds += 1
                for outbox in list(self.viewers):
                    self._send(outbox)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def _cell_handles(self) -> dict:
        """Every cell actor's handle, looked up again every ``handles_every_s`` (cells open and retire)."""
        from actors.cell import NAMESPACE, cell_handles

        read_at, handles = self._handles
        if time.monotonic() - read_at > self.handles_every_s:
            handles = await asyncio.to_thread(cell_handles, NAMESPACE)
            self._handles = (time.monotonic(), handles)
        return handles


def ops_page_html() -> str:
    """The ops map page (vendored in the package)."""
    return resources.files(STATIC_PACKAGE[0]).joinpath(STATIC_PACKAGE[1], "index.html").read_text("utf-8")


async def ops_page(request: Request) -> HTMLResponse:
    """The page itself holds no data: it connects to ``/v1/ws/ops`` with an admin token."""
    return HTMLResponse(ops_page_html(), headers={"Cache-Control": "no-cache"})


@contextlib.contextmanager
def ops_feed():
    """An :class:`OpsFeed` for the app's lifespan."""
    feed = OpsFeed()
    try:
        yield feed
    finally:
        feed.stop()


ROUTES = [
    Route("/ops", ops_page, methods=["GET"]),
    Mount("/ops/static", app=StaticFiles(packages=[STATIC_PACKAGE]), name="ops-static"),
]
