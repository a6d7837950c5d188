"""Bounded request heads: uvicorn's httptools protocol with limits on the request line and headers.

uvicorn 0.54 sets none on its httptools path (llhttp takes a 1 MB header or
2,000 headers and httptools buffers them in memory), and a websocket upgrade
is handed to websockets, whose own refusal (414/431 past 8 KiB lines or 128
headers) uvicorn never writes: the connection hung. :class:`BoundedHttpToolsProtocol`
checks every request head, plain HTTP and websocket upgrades alike, before
anything else sees it:

* a request line (method, target, version) over ``max_request_line`` bytes -> **414**;
* a header line over ``max_header_line``, headers over ``max_headers_bytes`` in
  total, or more than ``max_headers`` of them -> **431**.

The answer is a small JSON error with ``Connection: close``; the server then
stops writing (FIN) and discards what the client still sends for at most
``refusal_grace_s`` before closing, so the client reads the answer instead of
a reset. Use it as uvicorn's ``http`` option (:data:`PROTOCOL`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("hexdispatch.http")

#: The ``http`` option of uvicorn that serves this protocol.
PROTOCOL = "server.http_limits:BoundedHttpToolsProtocol"


@dataclass(frozen=True)
class RequestLimits:
    max_request_line: int = 8 * 1024
    """Bytes of the request line, CRLF included (websockets' own limit for a handshake line)."""
    max_header_line: int = 8 * 1024
    """Bytes of one header line, CRLF included."""
    max_headers_bytes: int = 16 * 1024
    """Bytes of all header lines together."""
    max_headers: int = 100
    """Header lines in one request."""
    refusal_grace_s: float = 1.0
    """After a refusal, how long what the client still sends is read and dropped before the close."""


class HeadTooLarge(Exception):
    """A request head over a limit: answered with ``status`` and closed."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def refusal_response(error: HeadTooLarge, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The whole HTTP response refusing a request head: status line, headers and a JSON error body."""
    code = "uri_too_long" if error.status == HTTPStatus.REQUEST_URI_TOO_LONG else "headers_too_large"
    body = orjson.dumps({"error": {"code": code, "message": error.message}})
    lines = [f"HTTP/1.1 {error.status.value} {error.status.phrase}".encode("ascii")]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [b"content-type: application/json", b"content-length: " + str(len(body)).encode("ascii"),
              b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol refusing request heads over :class:`RequestLimits` (414/431)."""

    limits = RequestLimits()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.refused = False
        self._close_timer = None
        self._in_head = True
        self._head_bytes = 0  # raw bytes received since this head began: bounds what httptools buffers
        self._line_bytes = 0
        self._header_bytes = 0
        self._header_count = 0

    def connection_lost(self, exc) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # read and dropped until the close
        self._unset_keepalive_if_required()
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse(exc.__context__)
            else:
                self._invalid()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        limits = self.limits
        if self._in_head and self._head_bytes > limits.max_request_line + limits.max_headers_bytes + 2:
            # A head still incomplete past every limit together: one of them is already crossed.
            self._refuse(HeadTooLarge(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                      f"request headers are limited to {limits.max_headers_bytes} bytes"))

    def _invalid(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._line_bytes = len(" HTTP/1.1\r\n")
        self._header_bytes = self._header_count = 0

    def on_url(self, url: bytes) -> None:
        if not self.url:
            self._line_bytes += len(self.parser.get_method()) + 1
        self._line_bytes += len(url)
        if self._line_bytes > self.limits.max_request_line:
            raise HeadTooLarge(HTTPStatus.REQUEST_URI_TOO_LONG,
                               f"the request line is limited to {self.limits.max_request_line} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        line = len(name) + len(value) + 4  # "name: value\r\n"
        self._header_count += 1
        self._header_bytes += line
        if line > limits.max_header_line:
            problem = f"a header line is limited to {limits.max_header_line} bytes"
        elif self._header_count > limits.max_headers:
            problem = f"a request is limited to {limits.max_headers} headers"
        elif self._header_bytes > limits.max_headers_bytes:
            problem = f"request headers are limited to {limits.max_headers_bytes} bytes"
        else:
            super().on_header(name, value)
            return
        raise HeadTooLarge(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, problem)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def _refuse(self, error: HeadTooLarge) -> None:
        """Answer the refusal, stop writing, drop what still comes for a moment, then close."""
        self.refused = True
        log.warning("refused a request head from %s: %s", self.client, error.message)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head while a response is being written: no room for ours
            return
        self.transport.write(refusal_response(error, self.server_state.default_headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._close_timer = self.loop.call_later(self.limits.refusal_grace_s, self.transport.close)
