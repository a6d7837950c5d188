"""``docs/protocol.md`` and ``wire/`` describe the same protocol: every frame, field, error and close code of
one is in the other; and every error code the server can produce is in the list."""

import re
from pathlib import Path

import msgpack
import pytest

import wire

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "protocol.md").read_text()


def sections(doc: str) -> dict[str, str]:
    """The doc's ``## `` sections by title."""
    parts = re.split(r"^## (.+)$", doc, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def table_rows(body: str) -> list[list[str]]:
    """The cells of every table row of ``body`` (header and separator rows left out)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()
            if line.startswith("|")]
    return [r for r in rows[2:] if not set("".join(r)) <= set("-: ")] if rows else []


def ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def documented_frames(title: str) -> dict[str, set[str]]:
    """``{type: {field, ...}}`` of a frame table: the type in the first column, its fields ticked in the second."""
    return {ticked(row[0])[0]: set(ticked(row[1])) for row in table_rows(sections(DOC)[title])}


def module_frames(frame_classes) -> dict[str, set[str]]:
    return {wire.frame_type(c): set(wire.frame_fields(c)) for c in frame_classes}


SERVER_TO_DRIVER = {"welcome", "offer", "offer_withdrawn", "assigned", "job_withdrawn", "cancelled", "ack", "error",
                    "pong"}


@pytest.mark.parametrize("title,frames", [
    ("Driver → server", wire.DRIVER_FRAMES),
    ("Customer → server", wire.CUSTOMER_FRAMES),
    ("Server → driver", [c for c in wire.SERVER_FRAMES if wire.frame_type(c) in SERVER_TO_DRIVER]),
    ("Server → customer",
     [c for c in wire.SERVER_FRAMES if wire.frame_type(c) not in SERVER_TO_DRIVER - {"error", "pong"}]),
])
def test_every_frame_and_field_in_the_doc_is_in_the_module_and_back(title, frames):
    assert documented_frames(title) == module_frames(frames)


def test_every_server_frame_is_documented_for_some_client():
    documented = set(documented_frames("Server → driver")) | set(documented_frames("Server → customer"))
    assert documented == {wire.frame_type(c) for c in wire.SERVER_FRAMES}


def test_every_error_code_is_documented_with_its_retryability():
    rows = table_rows(sections(DOC)["Errors"])
    documented = {ticked(row[0])[0]: row[1] for row in rows}
    assert documented == {code: "yes" if e.retryable else "no" for code, e in wire.ERROR_CODES.items()}


def test_every_close_code_is_documented():
    rows = table_rows(sections(DOC)["Close codes and reconnecting"])
    assert {int(row[0]) for row in rows} == {int(code) for code in wire.Close}


def test_every_handshake_refusal_is_documented_with_its_status():
    rows = table_rows(sections(DOC)["Handshake"])
    assert {ticked(row[1])[0]: int(row[0]) for row in rows} == {**wire.HANDSHAKE_REFUSALS, "invalid_encoding": 400}


def test_the_protocol_version_is_the_documented_one():
    assert f"version {wire.PROTOCOL_VERSION})" in DOC.splitlines()[0]


PRODUCERS = ["dispatch/cell.py", "actors/cell.py", "server/ws.py", "store/orders.py", "store/errors.py", "wire/codec.py",
             *(str(path.relative_to(ROOT)) for path in sorted((ROOT / "server/gateway").glob("*.py")))]


def test_every_error_code_the_server_produces_is_in_the_list():
    """Codes written where errors reaching a socket are made: CellError, store errors, error frames."""
    produced = set()
    for path in PRODUCERS:
        source = (ROOT / path).read_text()
        produced |= set(re.findall(r'(?:CellError|error_frame|ProtocolError|Conflict|Invalid)\(\s*"(\w+)"',
                                   source))
        produced |= set(re.findall(r'conn\.error\(\s*"(\w+)"', source))
        if "NotFound(" in source:
            produced.add("not_found")
    store_only = {"idempotency_key_reused", "unknown_restaurant", "restaurant_closed", "item_unavailable",
                  "unknown_item", "outside_delivery_area"}  # refusals of placing an order over HTTP, never a frame's
    assert produced - store_only <= set(wire.ERROR_CODES), produced - store_only - set(wire.ERROR_CODES)
    assert {"offer_expired", "not_yet_assigned", "unknown_driver", "unavailable"} <= produced


@pytest.mark.parametrize("frame", [
    wire.Welcome("d-1", 2, 1.5, "idle", [3], None, {"job_id": "j", "orders": [], "delivered": []}),
    wire.OfferFrame("o-1", 12.5, [{"order_id": 1}]), wire.OfferWithdrawn("o-1", "expired"),
    wire.Assigned("j-1", []), wire.JobWithdrawn("j-1", "driver_lost"), wire.Cancelled(4, "x"),
    wire.Ack("accept", "m1", offer_id="o-1"), wire.error_frame("unavailable", "try again", "m2"),
    wire.Pong("m3", 9.0), wire.Subscribed(5, None, 7), wire.Unsubscribed(5), 
    wire.Status(5, 2, "accept", "accepted", "accepted", "unassigned", {}, 3.25),
    wire.DriverPosition(5, "d-1", 41.0, -87.0, None, 3.0, 1234),
])
@pytest.mark.parametrize("encoding", list(wire.Encoding))
def test_server_frames_encode_to_their_documented_maps(frame, encoding):
    data = wire.load(wire.encode(frame, encoding))
    assert data == {"type": frame.type, **{name: getattr(frame, name) for name in wire.frame_fields(type(frame))}}
    assert isinstance(wire.encode(frame, encoding), bytes if encoding is wire.Encoding.MSGPACK else str)


def test_error_frames_say_whether_to_retry_and_which_message_they_answer():
    assert wire.error_frame("unavailable", "x", "m1").retryable
    assert not wire.error_frame("unknown_offer", "x").retryable
    with pytest.raises(wire.ProtocolError) as info:
        wire.decode(msgpack.packb({"type": "accept", "id": "m9", "offer_id": 5}), wire.DRIVER_MESSAGES)
    assert (info.value.code, info.value.re) == ("invalid_message", "m9")


@pytest.mark.parametrize("frame", [
    wire.Gps(lat=1.0, lng=2.0, t=5, seq=1), wire.GoOnline(id="a"), wire.GoOffline(), wire.AcceptOffer(offer_id="o"),
    wire.DeclineOffer(offer_id="o", id="b"), wire.AtRestaurant(job_id="j"), wire.PickedUp(job_id="j"),
    wire.Delivered(order_id=3, id="c"), wire.Ping(id="p"),
])
def test_client_frames_round_trip(frame):
    for encoding in wire.Encoding:
        assert wire.decode(wire.encode(frame, encoding), wire.DRIVER_MESSAGES) == frame


def test_the_connection_encoding_is_chosen_by_name_only():
    assert wire.connection_encoding(None) is wire.Encoding.MSGPACK
    assert wire.connection_encoding("json") is wire.Encoding.JSON
    with pytest.raises(ValueError):
        wire.connection_encoding("xml")
