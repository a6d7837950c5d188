"""The websocket protocol core: decoding, validation, rate limits and the abuse meter."""

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from server import protocol as p


def frame(**fields) -> bytes:
    return msgpack.packb(fields)


def test_gps_round_trip_msgpack_and_json():
    msg = p.decode(frame(type="gps", lat=41.9, lng=-87.6, heading=90.0, speed=8.5, t=1, seq=7), p.DRIVER_MESSAGES)
    assert isinstance(msg, p.Gps) and (msg.lat, msg.lng, msg.seq) == (41.9, -87.6, 7)
    text = p.decode('{"type": "accept", "offer_id": "o-1"}', p.DRIVER_MESSAGES)
    assert isinstance(text, p.AcceptOffer) and text.offer_id == "o-1"
    assert p.decode(p.encode({"type": "subscribe", "order_id": 3}), p.CUSTOMER_MESSAGES).order_id == 3


@pytest.mark.parametrize(
    "raw,code",
    [
        (b"\xc1", "malformed_frame"),
        (b"\x92\x01\x02", "malformed_frame"),
        ("not json", "malformed_frame"),
        (frame(type="teleport"), "invalid_message"),
        (frame(lat=1, lng=2), "invalid_message"),
        (frame(type="gps", lat=91, lng=0), "invalid_message"),
        (frame(type="gps", lat="north", lng=0), "invalid_message"),
        (frame(type="gps", lat=float("nan"), lng=0), "invalid_message"),
        (frame(type="gps", lat=1, lng=2, extra=1), "invalid_message"),
        (frame(type="accept", offer_id="x" * 65), "invalid_message"),
        (frame(type="delivered", order_id=-4), "invalid_message"),
        (frame(type="delivered", order_id=2**64 - 1), "invalid_message"),
        (b"\x81" + msgpack.packb("type") + b"\xda" + (5000).to_bytes(2, "big") + b"a" * 5000, "frame_too_large"),
    ],
)
def test_bad_frames_are_protocol_errors(raw, code):
    with pytest.raises(p.ProtocolError) as info:
        p.decode(raw, p.DRIVER_MESSAGES)
    assert info.value.code == code and info.value.message


def test_customers_cannot_send_driver_messages():
    with pytest.raises(p.ProtocolError):
        p.decode(frame(type="gps", lat=1, lng=1), p.CUSTOMER_MESSAGES)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_other_exceptions(raw):
    try:
        p.decode(raw, p.DRIVER_MESSAGES)
    except p.ProtocolError:
        pass


def test_token_bucket():
    bucket = p.TokenBucket(rate=2, burst=3)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(0.5) and not bucket.allow(0.5)
    assert sum(bucket.allow(10.0) for _ in range(10)) == 3


def test_abuse_meter_closes_after_repeated_strikes_only():
    meter = p.AbuseMeter(limit=3, window_s=10)
    assert not any(meter.strike(t) for t in (0, 1, 2))
    assert meter.strike(3)
    slow = p.AbuseMeter(limit=3, window_s=10)
    assert not any(slow.strike(t * 11.0) for t in range(20))
