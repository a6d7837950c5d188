"""The ASGI extension ``hexdispatch.frame_sink``: binary frames taken where uvicorn parses them.

Under plain ASGI every websocket frame is queued for the app and wakes its
task: at 10,000 drivers that is most of what a front door does per GPS fix
(the queue, the wake-up, pausing and resuming the socket's reads, and a
fresh chain of coroutines and futures for the garbage collector to walk).
:class:`FrameSinkProtocol` is uvicorn's websocket protocol with one addition:
the scope's ``extensions`` carry a :class:`FrameSink`, and once the app sets
its ``take`` callable, each binary frame is first offered to it, synchronously,
as it is parsed. ``take`` returns True when it handled the frame; anything
else (False, a text frame, a message fragmented into frames) goes the usual way
through ``receive()``. While frames wait in that queue, later ones queue
behind them, so the app sees a socket's frames in the order they came.

Run under another server (or uvicorn's own protocols) the extension is
absent and the app reads every frame through ``receive()``.
"""

from __future__ import annotations

import logging
from typing import Callable

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("hexdispatch.ws")

EXTENSION = "hexdispatch.frame_sink"
#: The ``ws`` option of uvicorn that serves this protocol.
PROTOCOL = "server.frame_sink:FrameSinkProtocol"


class FrameSink:
    """Set :attr:`take` to handle binary frames as they arrive; None hands them all to ``receive()``."""

    __slots__ = ("take",)

    def __init__(self):
        self.take: Callable[[bytes], bool] | None = None


def frame_sink(scope) -> FrameSink | None:
    """The connection's sink, when its server offers the extension."""
    return scope.get("extensions", {}).get(EXTENSION)


class FrameSinkProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sink = FrameSink()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.handshake_initiated and self.conn.handshake_exc is not None:
            # websockets refused the request itself (a line over 8 KiB, too many headers: 414/431) and
            # queued its answer; uvicorn 0.54 never writes it and the connection used to hang open.
            self.handshake_complete = self.close_sent = True
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    def handle_connect(self, event) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            scope["extensions"][EXTENSION] = self.sink

    def handle_bytes(self, event) -> None:
        # A whole binary message (not the first part of a fragmented one): offered to the sink as it is,
        # without the lists uvicorn builds per message, which the collector would walk at every freeze.
        take = self.sink.take
        if take is not None and event.fin and not self.close_sent and self.queue.empty():
            try:
                taken = take(event.data)
            except Exception:  # the app's bug must not break the connection: the frame goes the usual way
                log.exception("the frame sink failed; the frame goes to receive()")
                taken = False
            if taken:
                return
        super().handle_bytes(event)
