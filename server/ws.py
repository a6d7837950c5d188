"""Websocket endpoints ``/v1/ws/driver`` and ``/v1/ws/customer`` (see ``docs/protocol.md``).

Each connection authenticates with its JWT (``?token=`` or an
``Authorization: Bearer`` header), then runs a reader (frames in: decode,
validate, rate-limit, act) and a writer (its :class:`~server.gateway.Outbox`
out). Under uvicorn with :mod:`server.frame_sink`, a driver's plainly valid
GPS fixes skip the reader: they are taken as they are parsed. Bad frames get
an error frame; repeated abuse closes the socket with 1008. Nothing a client
sends can crash the server or a cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import wire
from server.auth import Principal, Role, bearer_token, require_role
from server.errors import ApiError, error_body
from server.frame_sink import frame_sink
from server.gateway import CustomerLink
from server.responses import JSONResponse
from store import orders as order_store

log = logging.getLogger("hexdispatch.ws")

BEHIND = "too far behind; reconnect and resume"
#: Least time between two ``rate_limited`` answers to a socket's excess GPS fixes (seconds).
GPS_REFUSAL_INTERVAL_S = 1.0
#: A socket hands the event loop to the others after this many frames in a row.
FRAMES_PER_TURN = 8


def _principal(websocket: WebSocket, role: Role) -> Principal:
    token = websocket.query_params.get("token") or bearer_token(websocket.headers.get("authorization"))
    return require_role(websocket.app.state.tokens.verify(token, time.time()), role)


class Connection:
    """One accepted socket: its encoding (msgpack or JSON, chosen at the handshake), outbox, limits and writer."""

    def __init__(self, websocket: WebSocket, gateway, principal: Principal, encoding: wire.Encoding):
        self.websocket = websocket
        self.encoding = encoding
        self.close_grace_s = gateway.params.close_grace_s
        self.outbox = gateway.outbox(self.encode, lambda: self.close(wire.Close.TRY_AGAIN_LATER, BEHIND))
        limits = websocket.app.state.settings.rate_limits
        self.gps_bucket = wire.TokenBucket(limits.gps.rate, limits.gps.burst)
        self.limiter = websocket.app.state.rate_limiter
        self.message_limit = limits.ws_message
        self.message_key = f"ws-message:{principal.role.value}:{principal.sub}"
        self.abuse = wire.AbuseMeter()
        self.gps_refused_at = -GPS_REFUSAL_INTERVAL_S
        self.loop_guard = websocket.app.state.loop_guard
        self.frames_read = 0
        self.stats = gateway.stats  # frames in and out, by role (``/metrics``)
        self.frames_in, self.frames_out = f"frames_in_{principal.role.value}", f"frames_out_{principal.role.value}"
        for key in (self.frames_in, self.frames_out):
            self.stats.setdefault(key, 0)
        self.writer: asyncio.Task | None = None
        self.closing = False

    def encode(self, frame: wire.ServerFrame | dict) -> bytes | str:
        """``frame`` in the encoding this connection chose when it opened."""
        return wire.encode(frame, self.encoding)

    async def write_loop(self) -> None:
        outbox, websocket = self.outbox, self.websocket
        while not outbox.closed:
            frame = outbox.next_frame()
            if frame is None:
                await outbox.wakeup.wait()
                continue
            if isinstance(frame, bytes):
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame)
            outbox.written()
            self.stats[self.frames_out] += 1
        if not outbox.overflowed:  # an overflow closed the socket already
            self.close(wire.Close.REPLACED, "replaced by a newer connection")

    def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` now, without waiting for its writes (a reader that stopped reading
        would block them forever): the close frame goes behind what the connection holds, and the
        connection is aborted if it is not closed within ``close_grace_s``."""
        if self.closing:
            return
        self.closing = True
        self.outbox.close()
        if self.writer is not None and self.writer is not asyncio.current_task():
            self.writer.cancel()  # it may be stuck in a write; what it held is dropped with the connection
        sink = frame_sink(self.websocket.scope)
        if sink is not None:
            sink.close(code, reason, self.close_grace_s)
        else:  # another server than uvicorn with server.frame_sink: its own close, bounded
            asyncio.get_running_loop().create_task(self._close_bounded(code, reason))

    async def _close_bounded(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.websocket.close(code, reason), self.close_grace_s)

    async def next_message(self, adapter):
        """The next validated, rate-limited message; ``None`` once the client is gone or was closed
        for abuse. Bad or excess frames get error frames on the way, and repeated abuse closes with 1008.

        One plain coroutine, not a chain of async generators: a socket waiting for its next frame
        should hold as few fresh objects as possible (the collector walks them all, see
        ``runtime.gc_watch``), and it drops its last message before it waits.
        """
        while True:
            self.frames_read += 1
            if self.frames_read % FRAMES_PER_TURN == 0:
                # Reading a buffered frame does not suspend: without this a flooding socket
                # would keep reading until its buffer is empty while the other sockets wait.
                await asyncio.sleep(0)
            if self.loop_guard.overdue():
                await self.loop_guard.turn()
            event = await self.websocket.receive()
            if event["type"] == "websocket.disconnect":
                return None
            frame = event.get("bytes")
            if frame is None:
                frame = event.get("text")
                if frame is None:
                    continue
            del event
            self.stats[self.frames_in] += 1
            try:
                message = wire.decode(frame, adapter)
            except wire.ProtocolError as exc:
                if self.error(exc.code, exc.message, exc.re):
                    await self.close_for_abuse()
                    return None
                continue
            if isinstance(message, wire.Gps):
                now = time.monotonic()
                if self.gps_bucket.allow(now):
                    return message
                # A burst of fixes buffered while offline is no abuse: the excess is dropped, answered at most
                # once a second, and never counts toward the 1008 close.
                if now - self.gps_refused_at >= GPS_REFUSAL_INTERVAL_S:
                    self.gps_refused_at = now
                    self.outbox.send(wire.error_frame("rate_limited", "too many gps fixes; excess fixes dropped"))
                continue
            if await self.limiter.allow(self.message_key, self.message_limit):
                return message
            if self.error("rate_limited", f"too many {message.type} messages; slow down", message.id):
                await self.close_for_abuse()
                return None

    def error(self, code: str, message: str, re: str | None = None) -> bool:
        """Queue an error frame (answering message ``re``) and count a strike; True when the socket must be
        closed (1008)."""
        self.outbox.send(wire.error_frame(code, message, re))
        return self.abuse.strike(time.monotonic())

    async def close_for_abuse(self) -> None:
        await asyncio.sleep(0.05)  # let the last error frame go out first
        self.close(wire.Close.POLICY_VIOLATION, "too many invalid or excess messages")


async def _serve(websocket: WebSocket, role: Role, handle) -> None:
    gateway = websocket.app.state.gateway
    try:
        principal = _principal(websocket, role)
        encoding = _encoding(websocket)
        if gateway is None:
            raise ApiError(503, "dispatch_unavailable", "live dispatch is not running on this server")
        limits = websocket.app.state.settings.rate_limits
        key = f"ws-connect:{role.value}:{principal.sub}"
        if not await websocket.app.state.rate_limiter.allow(key, limits.ws_connect):
            raise ApiError(429, "reconnecting_too_fast", "reconnecting too fast; back off")
    except ApiError as exc:
        await _refuse(websocket, exc)
        return
    await websocket.accept()
    conn = Connection(websocket, gateway, principal, encoding)
    conn.writer = asyncio.get_running_loop().create_task(conn.write_loop())
    try:
        await handle(websocket, gateway, principal, conn)
    except WebSocketDisconnect:
        pass
    finally:
        conn.outbox.close()
        conn.writer.cancel()


def _encoding(websocket: WebSocket) -> wire.Encoding:
    """The encoding the client chose with ``?encoding=`` (msgpack by default); 400 for an unknown one."""
    try:
        return wire.connection_encoding(websocket.query_params.get("encoding"))
    except ValueError:
        raise ApiError(400, "invalid_encoding", "encoding must be msgpack or json") from None


async def _refuse(websocket: WebSocket, exc: ApiError) -> None:
    """Refuse the handshake as the HTTP API would, with the status and JSON error body of
    :data:`wire.HANDSHAKE_REFUSALS`, where the server offers ASGI's denial response; else close it with 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse(error_body(exc.code, exc.message), status_code=exc.status))
    else:
        await websocket.close(wire.Close.POLICY_VIOLATION, exc.message[:120])


async def driver_socket(websocket: WebSocket) -> None:
    await _serve(websocket, Role.DRIVER, _driver_session)


async def customer_socket(websocket: WebSocket) -> None:
    await _serve(websocket, Role.CUSTOMER, _customer_session)


def gps_taker(gateway, link, bucket: wire.TokenBucket):
    """The GPS fast path (``server.frame_sink``): a plainly valid fix within the socket's rate limit goes
    straight to the gateway; anything else is left to :meth:`Connection.next_message` (False), and so is a fix
    the gateway refuses, which the full path then judges again and answers."""
    def take(frame: bytes) -> bool:
        fix = wire.plain_gps(frame)
        if fix is None or not bucket.allow(time.monotonic()):
            return False
        if gateway.gps(link, *fix[:4], time.time(), fix[4]) is not None:
            bucket.give_back()  # the full path charges it
            return False
        gateway.stats["gps_fast"] += 1
        gateway.stats["frames_in_driver"] += 1
        return True
    return take


async def _driver_session(websocket, gateway, principal: Principal, conn: Connection) -> None:
    link = await gateway.attach_driver(principal.sub, conn.outbox)
    conn.outbox.send(await gateway.welcome(link))
    sink = frame_sink(websocket.scope)
    if sink is not None:
        sink.take = gps_taker(gateway, link, conn.gps_bucket)
    try:
        while (message := await conn.next_message(wire.DRIVER_MESSAGES)) is not None:
            if isinstance(message, wire.Gps):
                refusal = gateway.gps(link, message.lat, message.lng, message.heading, message.speed, time.time(),
                                      message.t)
                if refusal is not None:
                    gateway.count_refusal(refusal.code)
                    if conn.error(refusal.code, refusal.message):
                        return await conn.close_for_abuse()
            else:
                for reply in await gateway.answer_driver(link, message):
                    conn.outbox.send(reply)
            message = None  # not held while waiting for the next frame
    finally:
        if sink is not None:
            sink.take = None
        gateway.detach_driver(link)


async def _customer_session(websocket, gateway, principal: Principal, conn: Connection) -> None:
    customer = CustomerLink(principal.sub, conn.outbox)
    try:
        while (message := await conn.next_message(wire.CUSTOMER_MESSAGES)) is not None:
            if isinstance(message, wire.Ping):
                conn.outbox.send(wire.Pong(message.id, time.time()))
            elif isinstance(message, wire.Subscribe):
                async with websocket.app.state.pool.acquire() as db:
                    order = await order_store.get_order(db, principal, message.order_id)
                if order is None:
                    if conn.error("not_found", "order not found", message.id):
                        return await conn.close_for_abuse()
                    continue
                if message.after_seq > order["version"]:
                    if conn.error("after_seq_ahead", f"after_seq {message.after_seq} is past the order's last event"
                                  f" ({order['version']})", message.id):
                        return await conn.close_for_abuse()
                    continue
                conn.outbox.send(wire.Subscribed(message.order_id, message.id, order["version"]))
                await gateway.subscribe(customer, message.order_id, message.after_seq)
            elif isinstance(message, wire.Unsubscribe):
                gateway.unsubscribe(customer, message.order_id)
                conn.outbox.send(wire.Unsubscribed(message.order_id, message.id))
    finally:
        gateway.unsubscribe(customer)


async def ops_socket(websocket: WebSocket) -> None:
    await _serve(websocket, Role.ADMIN, _ops_session)


async def _ops_session(websocket, gateway, principal: Principal, conn: Connection) -> None:
    """The ops map's feed (``server.api.ops``): JSON frames of every cell and of the drivers, orders and jobs in
    the viewport the page names (``viewport`` frames), about once a second, latest-wins."""
    from dispatch.opsmap import MAX_FRAME_BYTES, Viewport

    feed = websocket.app.state.ops_feed
    conn.encoding = wire.Encoding.JSON  # a browser page: JSON text frames
    conn.outbox.max_bytes = max(conn.outbox.max_bytes, 2 * MAX_FRAME_BYTES)  # one frame waits, latest-wins
    conn.outbox.send(wire.OpsWelcome(wire.PROTOCOL_VERSION, feed.interval_s))
    feed.watch(conn.outbox)
    try:
        while (message := await conn.next_message(wire.OPS_MESSAGES)) is not None:
            if isinstance(message, wire.Ping):
                conn.outbox.send(wire.Pong(message.id, time.time()))
            elif isinstance(message, wire.Viewport):
                feed.look_at(conn.outbox, Viewport(message.south, message.west, message.north, message.east))
            message = None
    finally:
        feed.leave(conn.outbox)


ROUTES = [
    WebSocketRoute("/v1/ws/driver", driver_socket),
    WebSocketRoute("/v1/ws/customer", customer_socket),
    WebSocketRoute("/v1/ws/ops", ops_socket),
]
