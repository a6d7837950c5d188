"""Close codes and error codes of the websocket protocol: the complete lists (``docs/protocol.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Close(IntEnum):
    """Every close code the server sends, and what a client does about it."""

    NORMAL = 1000
    """The client closed, or the server shut the socket down cleanly: reconnect when needed."""
    GOING_AWAY = 1001
    """The front door is shutting down: reconnect at once (with back-off), another one takes over."""
    ABNORMAL = 1006
    """No close frame (network loss, reset): reconnect with back-off."""
    POLICY_VIOLATION = 1008
    """Too many refused frames: do not reconnect automatically."""
    MESSAGE_TOO_BIG = 1009
    """A frame over the transport limit (1 MiB): do not resend it."""
    INTERNAL_ERROR = 1011
    """The server failed: reconnect with back-off."""
    SERVICE_RESTART = 1012
    """The server is restarting: reconnect with the busy back-off."""
    TRY_AGAIN_LATER = 1013
    """The socket fell behind (a slow reader): reconnect and resume with ``after_seq``."""
    REPLACED = 4000
    """A newer socket of the same driver opened: do not reconnect."""


#: Close codes after which a client must not reconnect by itself.
FINAL_CLOSE_CODES = frozenset({Close.POLICY_VIOLATION, Close.MESSAGE_TOO_BIG, Close.REPLACED})
#: Close codes saying the server is busy: reconnect, backing off from at least a second.
BUSY_CLOSE_CODES = frozenset({Close.SERVICE_RESTART, Close.TRY_AGAIN_LATER})


@dataclass(frozen=True)
class ErrorCode:
    """One error code: whether sending the same message again may succeed, and what it means."""

    code: str
    retryable: bool
    meaning: str


def _codes(*codes: ErrorCode) -> dict[str, ErrorCode]:
    return {c.code: c for c in codes}


#: Every ``code`` an ``error`` frame (or a refused handshake) can carry.
ERROR_CODES: dict[str, ErrorCode] = _codes(
    ErrorCode("malformed_frame", False, "not msgpack / JSON, or not a map"),
    ErrorCode("frame_too_large", False, "a frame over 4,096 bytes (up to 1 MiB; larger ones close with 1009)"),
    ErrorCode("invalid_message", False, "unknown type, missing or wrong field"),
    ErrorCode("rate_limited", True, "over a rate limit; send it again later"),
    ErrorCode("not_found", False, "a customer subscribed to an order that is not theirs (or does not exist)"),
    ErrorCode("after_seq_ahead", False, "subscribe's after_seq is past the order's last event"),
    ErrorCode("no_position", True, "a driver replied before sending any GPS fix; send one, then retry"),
    ErrorCode("implausible_jump", False, "a GPS fix further from the last accepted one than any vehicle goes"),
    ErrorCode("outside_service_area", False, "a GPS fix in a cell the deployment does not serve"),
    ErrorCode("cell_capacity", True, "a GPS fix needing a new cell while the deployment runs its maximum"),
    ErrorCode("unknown_offer", False, "no such offer is open for this driver (withdrawn or declined)"),
    ErrorCode("offer_expired", False, "the offer's expires_at has passed"),
    ErrorCode("not_yet_assigned", True, "the accepted job is still being recorded; retry after assigned"),
    ErrorCode("not_your_order", False, "the order is not assigned to this driver"),
    ErrorCode("version_conflict", True, "the order changed meanwhile; send it again"),
    ErrorCode("unknown_job", False, "no such job is held by this driver"),
    ErrorCode("unknown_order", False, "no such order in the driver's job"),
    ErrorCode("unknown_driver", True, "the cell does not know this driver yet; send a GPS fix, then retry"),
    ErrorCode("not_picked_up", False, "delivered before the job was picked up"),
    ErrorCode("illegal_transition", False, "the reply does not fit the driver's or order's state"),
    ErrorCode("unknown_message", False, "a message the cell does not handle"),
    ErrorCode("unavailable", True, "dispatch could not record this now; nothing changed, send it again"),
)

#: Error codes of a refused websocket handshake (the JSON body of the HTTP refusal), with their HTTP status.
HANDSHAKE_REFUSALS: dict[str, int] = {
    "unauthenticated": 401, "invalid_token": 401, "token_expired": 401, "forbidden": 403,
    "reconnecting_too_fast": 429, "dispatch_unavailable": 503,
}


def is_retryable(code: str) -> bool:
    """Whether a message refused with ``code`` may succeed when sent again unchanged."""
    return ERROR_CODES[code].retryable
