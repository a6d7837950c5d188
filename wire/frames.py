"""Every websocket frame of protocol v2, in both directions, frozen and typed (``docs/protocol.md``).

Client frames are strict pydantic models (the server validates them);
server frames are frozen dataclasses (the server builds them). Every frame
has a ``type``; :data:`CLIENT_FRAMES` and :data:`SERVER_FRAMES` list them all.
Times are unix seconds (floats) everywhere except a driver's own GPS ``t``
(client milliseconds, passed back as ``fix_t``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

PROTOCOL_VERSION = 2
MAX_LATITUDE = 90
MAX_LONGITUDE = 180
MAX_HEADING_DEG = 360
MAX_SPEED_MPS = 100
MAX_COUNT = 2**53
MAX_ID = 2**63 - 1  # Postgres bigint
MAX_SEQ = 2**31 - 1  # Postgres integer: the audit trail's sequence numbers


def Number(low: float, high: float):
    """A finite number in [low, high]: an integer or a float, never a bool or string."""
    return Annotated[float, Field(ge=low, le=high, allow_inf_nan=False, strict=True)]


def Integer(low: int, high: int):
    """An integer in [low, high], never a bool, float or string."""
    return Annotated[int, Field(ge=low, le=high, strict=True)]


Token = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
OrderId = Integer(1, MAX_ID)
MessageId = Token
"""A client message id: any token the client picks; a repeat of a command with the same id gets the same answer."""


class ClientFrame(BaseModel):
    """A frame a client sends, validated strictly: values must already have their types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Command(ClientFrame):
    """A client frame answered by exactly one reply (``ack``, ``error``, ``pong``, ...) carrying its ``id`` as
    ``re``."""

    id: MessageId | None = None


# Driver -> server ---------------------------------------------------------------


class Gps(ClientFrame):
    type: Literal["gps"] = "gps"
    lat: Number(-MAX_LATITUDE, MAX_LATITUDE)
    lng: Number(-MAX_LONGITUDE, MAX_LONGITUDE)
    heading: Number(0, MAX_HEADING_DEG) | None = None
    speed: Number(0, MAX_SPEED_MPS) | None = None
    t: Integer(0, MAX_COUNT) | None = None
    seq: Integer(0, MAX_COUNT) = 0


class GoOnline(Command):
    type: Literal["online"] = "online"


class GoOffline(Command):
    type: Literal["offline"] = "offline"


class AcceptOffer(Command):
    type: Literal["accept"] = "accept"
    offer_id: Token


class DeclineOffer(Command):
    type: Literal["decline"] = "decline"
    offer_id: Token


class AtRestaurant(Command):
    type: Literal["at_restaurant"] = "at_restaurant"
    job_id: Token


class PickedUp(Command):
    type: Literal["picked_up"] = "picked_up"
    job_id: Token


class Delivered(Command):
    type: Literal["delivered"] = "delivered"
    order_id: OrderId


class Ping(Command):
    type: Literal["ping"] = "ping"


# Customer -> server -------------------------------------------------------------


class Subscribe(Command):
    type: Literal["subscribe"] = "subscribe"
    order_id: OrderId
    after_seq: Integer(0, MAX_SEQ) = 0


class Unsubscribe(Command):
    type: Literal["unsubscribe"] = "unsubscribe"
    order_id: OrderId


# Ops map viewer -> server (``/v1/ws/ops``, admin) ------------------------------


class Viewport(ClientFrame):
    """The part of the map the viewer shows; drivers, orders and jobs outside it are not sent."""

    type: Literal["viewport"] = "viewport"
    south: Number(-MAX_LATITUDE, MAX_LATITUDE)
    west: Number(-MAX_LONGITUDE, MAX_LONGITUDE)
    north: Number(-MAX_LATITUDE, MAX_LATITUDE)
    east: Number(-MAX_LONGITUDE, MAX_LONGITUDE)

    @model_validator(mode="after")
    def _south_of_north(self) -> "Viewport":
        if self.south > self.north:
            raise ValueError("south must not be north of north")
        return self


DRIVER_FRAMES = (Gps, GoOnline, GoOffline, AcceptOffer, DeclineOffer, AtRestaurant, PickedUp, Delivered, Ping)
CUSTOMER_FRAMES = (Subscribe, Unsubscribe, Ping)
OPS_FRAMES = (Viewport, Ping)
DRIVER_MESSAGES: TypeAdapter = TypeAdapter(Annotated[Union[DRIVER_FRAMES], Field(discriminator="type")])
CUSTOMER_MESSAGES: TypeAdapter = TypeAdapter(Annotated[Union[CUSTOMER_FRAMES], Field(discriminator="type")])
OPS_MESSAGES: TypeAdapter = TypeAdapter(Annotated[Union[OPS_FRAMES], Field(discriminator="type")])

# Server -> client ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerFrame:
    """A frame the server sends; :meth:`to_dict` is its map on the wire (``type`` first)."""

    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True, slots=True)
class Welcome(ServerFrame):
    """Sent first on a driver's socket: everything a restarted app needs to resume."""

    type: ClassVar[str] = "welcome"
    driver_id: str
    protocol: int
    server_time: float
    state: str
    orders: list[int]
    offer: dict | None = None
    job: dict | None = None


@dataclass(frozen=True, slots=True)
class OfferFrame(ServerFrame):
    type: ClassVar[str] = "offer"
    offer_id: str
    expires_at: float
    orders: list[dict]


@dataclass(frozen=True, slots=True)
class OfferWithdrawn(ServerFrame):
    type: ClassVar[str] = "offer_withdrawn"
    offer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Assigned(ServerFrame):
    type: ClassVar[str] = "assigned"
    job_id: str
    orders: list[dict]


@dataclass(frozen=True, slots=True)
class JobWithdrawn(ServerFrame):
    type: ClassVar[str] = "job_withdrawn"
    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Cancelled(ServerFrame):
    type: ClassVar[str] = "cancelled"
    order_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ack(ServerFrame):
    """A command was done; it names the command (``of``, ``re``) and repeats its fields."""

    type: ClassVar[str] = "ack"
    of: str
    re: str | None = None
    offer_id: str | None = None
    job_id: str | None = None
    order_id: int | None = None


@dataclass(frozen=True, slots=True)
class Error(ServerFrame):
    """A refused frame (it changed nothing); ``re`` is the refused command's ``id``, when it had one."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    re: str | None = None
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Pong(ServerFrame):
    type: ClassVar[str] = "pong"
    re: str | None = None
    server_time: float = 0.0


@dataclass(frozen=True, slots=True)
class Subscribed(ServerFrame):
    type: ClassVar[str] = "subscribed"
    order_id: int
    re: str | None = None
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class Unsubscribed(ServerFrame):
    type: ClassVar[str] = "unsubscribed"
    order_id: int
    re: str | None = None


@dataclass(frozen=True, slots=True)
class Status(ServerFrame):
    """One row of an order's audit trail, with both tracks of the order after it."""

    type: ClassVar[str] = "status"
    order_id: int
    seq: int
    event: str
    status: str
    kitchen_status: str | None
    courier_status: str | None
    payload: dict
    at: float
    eta: dict | None = None
    """The order's delivery estimate when the event was written (``dispatch.eta.Estimate.to_json``)."""


@dataclass(frozen=True, slots=True)
class DriverPosition(ServerFrame):
    type: ClassVar[str] = "driver_position"
    order_id: int
    driver_id: str
    lat: float
    lng: float
    heading: float | None
    t: float
    fix_t: int | None


@dataclass(frozen=True, slots=True)
class OpsWelcome(ServerFrame):
    """The ops map's first frame (``/v1/ws/ops``); map frames follow about every ``interval_s``."""

    type: ClassVar[str] = "welcome"
    protocol: int
    interval_s: float


@dataclass(frozen=True, slots=True)
class OpsFrame(ServerFrame):
    """One ops map viewer's picture (``dispatch.opsmap.compose_frame``): every cell, and the drivers, waiting
    orders and jobs in the viewer's viewport, as of ``at``; ``unanswered`` names cells that did not answer."""

    type: ClassVar[str] = "frame"
    at: float
    cells: list[dict]
    unanswered: list[str]
    drivers: list[list]
    pending: list[list]
    jobs: list[list]
    totals: dict[str, Any]


SERVER_FRAMES = (Welcome, OfferFrame, OfferWithdrawn, Assigned, JobWithdrawn, Cancelled, Ack, Error, Pong,
                 Subscribed, Unsubscribed, Status, DriverPosition)
CLIENT_FRAMES = tuple(dict.fromkeys(DRIVER_FRAMES + CUSTOMER_FRAMES))


def frame_fields(frame_class) -> list[str]:
    """The keys a frame of ``frame_class`` carries on the wire, ``type`` excluded."""
    if issubclass(frame_class, ClientFrame):
        return [name for name in frame_class.model_fields if name != "type"]
    return [f.name for f in fields(frame_class)]


__all__ = [
    "PROTOCOL_VERSION", "MAX_LATITUDE", "MAX_LONGITUDE", "MAX_HEADING_DEG", "MAX_SPEED_MPS", "MAX_COUNT", "MAX_ID",
    "MAX_SEQ", "ClientFrame", "Command", "Gps", "GoOnline", "GoOffline", "AcceptOffer", "DeclineOffer",
    "AtRestaurant", "PickedUp", "Delivered", "Ping", "Subscribe", "Unsubscribe", "Viewport", "DRIVER_FRAMES",
    "CUSTOMER_FRAMES", "OPS_FRAMES", "DRIVER_MESSAGES", "CUSTOMER_MESSAGES", "OPS_MESSAGES", "OpsWelcome", "OpsFrame", "ServerFrame", "Welcome", "OfferFrame", "OfferWithdrawn", "Assigned",
    "JobWithdrawn", "Cancelled", "Ack", "Error", "Pong", "Subscribed", "Unsubscribed", "Status", "DriverPosition",
    "SERVER_FRAMES", "CLIENT_FRAMES", "frame_fields", "frame_type",
]


def frame_type(frame_class) -> str:
    """The ``type`` value of ``frame_class``'s frames."""
    if issubclass(frame_class, ClientFrame):
        return frame_class.model_fields["type"].default
    return frame_class.type
