"""The hexdispatch websocket protocol (v2), sans I/O: every frame, its encoding, the close and error codes.

Used alike by the server (``server.ws``, ``server.gateway``), the cell actors and
core (``actors.cell``, ``dispatch.cell``) and the clients (``clients/``).
``docs/protocol.md`` describes it; ``tests/test_wire.py`` holds the two together.
"""

from wire.codec import (
    GPS_KEYS, MAX_FRAME_BYTES, MAX_TRANSPORT_BYTES, Encoding, ProtocolError, connection_encoding, decode, encode,
    error_frame, load, plain_gps,
)
from wire.codes import (
    BUSY_CLOSE_CODES, ERROR_CODES, FINAL_CLOSE_CODES, HANDSHAKE_REFUSALS, Close, ErrorCode, is_retryable,
)
from wire.frames import *  # noqa: F403
from wire.limits import AbuseMeter, TokenBucket
