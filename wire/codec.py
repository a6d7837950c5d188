"""Frames to and from bytes, sans I/O: decoding and validation, encoding, the GPS fast path.

A connection speaks one encoding, chosen when it opens (``?encoding=json``
for JSON text frames, msgpack binary frames otherwise): every frame the server
sends it is in that encoding. Frames of either kind are read from any client.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import msgpack
import orjson
from pydantic import TypeAdapter, ValidationError

from wire.codes import ERROR_CODES
from wire.frames import (
    MAX_COUNT, MAX_HEADING_DEG, MAX_LATITUDE, MAX_LONGITUDE, MAX_SPEED_MPS, ClientFrame, Error, Gps, ServerFrame,
)

MAX_FRAME_BYTES = 4096
#: Frames up to this size are read and answered (``frame_too_large`` past ``MAX_FRAME_BYTES``); larger ones are
#: refused by the transport with close 1009.
MAX_TRANSPORT_BYTES = 1024 * 1024


class Encoding(str, Enum):
    MSGPACK = "msgpack"
    JSON = "json"


def connection_encoding(query_value: str | None) -> Encoding:
    """The encoding a connection asked for with ``?encoding=`` (msgpack when absent); ValueError otherwise."""
    return Encoding(query_value or Encoding.MSGPACK.value)


class ProtocolError(Exception):
    """A frame the server cannot act on; answered with an error frame."""

    def __init__(self, code: str, message: str, re: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.re = re


def error_frame(code: str, message: str, re: str | None = None) -> Error:
    """The ``error`` frame for ``code`` (one of :data:`wire.codes.ERROR_CODES`), answering message ``re``."""
    known = ERROR_CODES.get(code)  # tests/test_wire.py holds every code the server produces to the list
    return Error(code, message, re, known is not None and known.retryable)


def load(frame: bytes | str) -> Any:
    """The value in ``frame``: msgpack if bytes, JSON if text; raises on anything undecodable."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return msgpack.unpackb(frame, raw=False, strict_map_key=True)
    return orjson.loads(frame)


def decode(frame: bytes | str, messages: TypeAdapter) -> ClientFrame:
    """The validated message in ``frame`` (msgpack if bytes, JSON if text); ``ProtocolError`` otherwise."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes")
    try:
        data = load(frame)
    except Exception as exc:  # msgpack raises a family of unrelated exception types
        raise ProtocolError("malformed_frame", f"the frame could not be decoded: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ProtocolError("malformed_frame", "a frame must be a map with a 'type'")
    re = data.get("id") if isinstance(data.get("id"), str) else None
    try:
        return messages.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "frame"
        problem = errors[0]["msg"] if errors else "invalid"
        raise ProtocolError("invalid_message", f"{where or 'frame'}: {problem}", re) from None


def encode(frame: ServerFrame | ClientFrame | dict, encoding: Encoding = Encoding.MSGPACK) -> bytes | str:
    """``frame`` on the wire: msgpack bytes, or JSON text."""
    if isinstance(frame, ServerFrame):
        data = frame.to_dict()
    elif isinstance(frame, ClientFrame):
        data = frame.model_dump()
    else:
        data = frame
    if encoding is Encoding.MSGPACK:
        return msgpack.packb(data, use_bin_type=True)
    return orjson.dumps(data).decode()


#: Every key a ``gps`` frame may carry (``Gps``'s fields).
GPS_KEYS = frozenset(Gps.model_fields)


def plain_gps(frame: bytes) -> tuple[float, float, float | None, float | None, int | None] | None:
    """``(lat, lng, heading, speed, t)`` of a msgpack ``gps`` frame that is plainly valid, else None.

    The GPS fast path (``server.frame_sink``) takes the common frame without
    pydantic: floats or ints (never bools) within :class:`Gps`'s bounds, no
    other key. Anything else gets None and goes through :func:`decode`, which
    explains the refusal. It accepts exactly the msgpack ``gps`` frames
    :func:`decode` accepts, and returns what :func:`decode` would (tests hold
    the two to that).
    """
    if len(frame) > MAX_FRAME_BYTES:
        return None
    try:
        data = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception:
        return None
    if type(data) is not dict or data.get("type") != "gps" or not GPS_KEYS.issuperset(data):
        return None
    lat, lng = _plain_float(data.get("lat"), MAX_LATITUDE), _plain_float(data.get("lng"), MAX_LONGITUDE)
    heading, speed, t, seq = data.get("heading"), data.get("speed"), data.get("t"), data.get("seq", 0)
    if lat is None or lng is None:
        return None
    if heading is not None and (heading := _plain_float(heading, MAX_HEADING_DEG, 0)) is None:
        return None
    if speed is not None and (speed := _plain_float(speed, MAX_SPEED_MPS, 0)) is None:
        return None
    if (t is not None and not _plain_count(t)) or not _plain_count(seq):
        return None
    return lat, lng, heading, speed, t


def _plain_float(value, high: int, low: int | None = None) -> float | None:
    """``value`` as a float when it is a float or int within [low, high] (low defaults to -high)."""
    kind = type(value)
    if kind is not float and kind is not int:  # bool, str, None, ...: for pydantic to judge
        return None
    if not (-high if low is None else low) <= value <= high:  # NaN fails every comparison
        return None
    return float(value)


def _plain_count(value) -> bool:
    return type(value) is int and 0 <= value <= MAX_COUNT
