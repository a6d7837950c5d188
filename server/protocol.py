"""The websocket protocol, sans I/O: frame decoding and validation, encoding, rate limits.

Frames are msgpack maps in binary websocket frames (JSON objects in text
frames are accepted for debugging), each with a ``type``. Everything here is
pure: the socket handlers in ``server/ws.py`` feed bytes and the current time
in, and get messages, errors and decisions out. See ``docs/protocol.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Union

import msgpack
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from server.errors import validation_details
from server.schemas import MAX_LATITUDE, MAX_LONGITUDE, EventSeq, Id, Integer, Latitude, Longitude, Number

MAX_FRAME_BYTES = 4096
PROTOCOL_VERSION = 1
#: Websocket close code for repeated abuse (RFC 6455 "policy violation").
CLOSE_POLICY_VIOLATION = 1008
CLOSE_REPLACED = 4000  # a newer socket of the same driver opened, on this or another front door

#: Bounds of a ``gps`` frame's fields (beside the latitude's and longitude's), shared by
#: :class:`Gps` and its fast path :func:`plain_gps`.
MAX_HEADING_DEG = 360
MAX_SPEED_MPS = 100
MAX_COUNT = 2**53

Token = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Message(BaseModel):
    """A frame's map, validated strictly (see ``server.schemas``): values must already have their types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Driver -> server ---------------------------------------------------------------


class Gps(Message):
    type: Literal["gps"]
    lat: Latitude
    lng: Longitude
    heading: Number(0, MAX_HEADING_DEG) | None = None
    speed: Number(0, MAX_SPEED_MPS) | None = None
    t: Integer(0, MAX_COUNT) | None = None
    seq: Integer(0, MAX_COUNT) = 0


class GoOnline(Message):
    type: Literal["online"]


class GoOffline(Message):
    type: Literal["offline"]


class AcceptOffer(Message):
    type: Literal["accept"]
    offer_id: Token


class DeclineOffer(Message):
    type: Literal["decline"]
    offer_id: Token


class AtRestaurant(Message):
    type: Literal["at_restaurant"]
    job_id: Token


class PickedUp(Message):
    type: Literal["picked_up"]
    job_id: Token


class Delivered(Message):
    type: Literal["delivered"]
    order_id: Id


class Ping(Message):
    type: Literal["ping"]


DriverMessage = Annotated[
    Union[Gps, GoOnline, GoOffline, AcceptOffer, DeclineOffer, AtRestaurant, PickedUp, Delivered, Ping],
    Field(discriminator="type"),
]

# Customer -> server -------------------------------------------------------------


class Subscribe(Message):
    type: Literal["subscribe"]
    order_id: Id
    after_seq: EventSeq = 0


class Unsubscribe(Message):
    type: Literal["unsubscribe"]
    order_id: Id


CustomerMessage = Annotated[Union[Subscribe, Unsubscribe, Ping], Field(discriminator="type")]

# Ops map viewer -> server (``/v1/ws/ops``, admin) ------------------------------


class Viewport(Message):
    """The part of the map the viewer shows; drivers, orders and jobs outside it are not sent."""

    type: Literal["viewport"]
    south: Latitude
    west: Longitude
    north: Latitude
    east: Longitude

    @model_validator(mode="after")
    def _south_of_north(self) -> "Viewport":
        if self.south > self.north:
            raise ValueError("south must not be north of north")
        return self


OpsMessage = Annotated[Union[Viewport, Ping], Field(discriminator="type")]

DRIVER_MESSAGES: TypeAdapter = TypeAdapter(DriverMessage)
CUSTOMER_MESSAGES: TypeAdapter = TypeAdapter(CustomerMessage)
OPS_MESSAGES: TypeAdapter = TypeAdapter(OpsMessage)


class ProtocolError(Exception):
    """A frame the server cannot act on; answered with an error frame."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def decode(frame: bytes | str, messages: TypeAdapter):
    """The validated message in ``frame`` (msgpack if bytes, JSON if text); ``ProtocolError`` otherwise."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError("frame_too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes")
    try:
        if isinstance(frame, (bytes, bytearray, memoryview)):
            data = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        else:
            data = orjson.loads(frame)
    except Exception as exc:  # msgpack raises a family of unrelated exception types
        raise ProtocolError("malformed_frame", f"the frame could not be decoded: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ProtocolError("malformed_frame", "a frame must be a map with a 'type'")
    try:
        return messages.validate_python(data)
    except ValidationError as exc:
        details = validation_details(exc)
        first = details[0] if details else {"field": "frame", "problem": "invalid"}
        raise ProtocolError("invalid_message", f"{first['field']}: {first['problem']}") from None


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


def encode(message: dict, binary: bool = True) -> bytes | str:
    """A frame for ``message``: msgpack bytes, or JSON text for debugging clients."""
    if binary:
        return msgpack.packb(message, use_bin_type=True)
    return orjson.dumps(message).decode()


def error_frame(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


@dataclass
class TokenBucket:
    """A rate limit: ``rate`` messages per second with bursts up to ``burst``; time is passed in."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    updated: float = 0.0

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at time ``now`` (seconds) if there are enough."""
        if self.tokens < 0:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def give_back(self, cost: float = 1.0) -> None:
        """Return what :meth:`allow` took for a message that will be judged (and charged) again."""
        self.tokens = min(self.burst, self.tokens + cost)


@dataclass
class AbuseMeter:
    """Counts a connection's bad frames; past ``limit`` within ``window_s`` it should be closed."""

    limit: int = 20
    window_s: float = 10.0
    strikes: list[float] = field(default_factory=list)

    def strike(self, now: float) -> bool:
        """Record one bad frame at ``now``; True when the connection has earned a 1008 close."""
        self.strikes = [t for t in self.strikes if now - t < self.window_s]
        self.strikes.append(now)
        return len(self.strikes) > self.limit
