"""The websocket protocol core: decoding, validation, rate limits and the abuse meter."""

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

import wire as p


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


@pytest.mark.parametrize("fields", [
    {"type": "gps", "lat": True, "lng": 2.0}, {"type": "gps", "lat": "41.8", "lng": 2.0},
    {"type": "gps", "lat": 1.0, "lng": 2.0, "t": 5.0}, {"type": "gps", "lat": 1.0, "lng": 2.0, "seq": "1"},
    {"type": "gps", "lat": 1.0, "lng": 2.0, "speed": False}, {"type": "delivered", "order_id": 3.0},
    {"type": "delivered", "order_id": "3"}, {"type": "delivered", "order_id": True},
])
def test_lax_types_are_refused_by_the_socket_validator(fields):
    """Issue 13 item 7: wrong types are refused (strict), on the full path and the GPS fast path alike."""
    for raw in (msgpack.packb(fields), __import__("json").dumps(fields)):
        with pytest.raises(p.ProtocolError) as info:
            p.decode(raw, p.DRIVER_MESSAGES)
        assert info.value.code == "invalid_message"
    assert p.plain_gps(msgpack.packb(fields)) is None


def test_integer_coordinates_are_numbers():
    assert p.decode(frame(type="gps", lat=41, lng=-87), p.DRIVER_MESSAGES).lat == 41.0
    assert p.plain_gps(frame(type="gps", lat=41, lng=-87)) == (41.0, -87.0, None, None, None)


@pytest.mark.parametrize("after_seq", [2**31 - 1, 2**31, 2**63, -1])
def test_after_seq_past_int4_is_refused(after_seq):
    """Issue 13 item 6: ``after_seq`` is an order_events.seq (Postgres integer); 2**31 used to crash the socket."""
    raw = frame(type="subscribe", order_id=1, after_seq=after_seq)
    if 0 <= after_seq < 2**31:
        assert p.decode(raw, p.CUSTOMER_MESSAGES).after_seq == after_seq
        return
    with pytest.raises(p.ProtocolError) as info:
        p.decode(raw, p.CUSTOMER_MESSAGES)
    assert info.value.code == "invalid_message" and "after_seq" in info.value.message


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


# The GPS fast path against the full validator ------------------------------------------------

_gps_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-2**60, max_value=2**60),
    st.none(), st.booleans(), st.text(max_size=3), st.sampled_from(["41.8", "1", "nan"]), st.just([1.0]),
)


@st.composite
def gps_like(draw) -> dict:
    """Dicts near a GPS fix: typical fields, often well-formed, sometimes wrong in type, range or keys."""
    fields = {"type": draw(st.sampled_from(["gps", "gps", "gps", "ping", "GPS"]))}
    for key, low, high in (("lat", -95, 95), ("lng", -185, 185), ("heading", -5, 365), ("speed", -1, 105),
                           ("t", -1, 2**53 + 1), ("seq", -1, 2**53 + 1)):
        if key in ("lat", "lng") or draw(st.booleans()):
            plain = st.integers(low, high) if key in ("t", "seq") else st.floats(low, high)
            fields[key] = draw(st.one_of(plain, plain, plain, _gps_values))
    if draw(st.integers(0, 9)) == 0:
        fields[draw(st.sampled_from(["driver_id", "extra", "lat"]))] = draw(_gps_values)
    return fields


@settings(max_examples=2000, deadline=None)
@given(gps_like())
def test_the_gps_fast_path_agrees_with_the_full_validator(fields):
    """Both ways: the fast path accepts exactly the gps frames decode accepts (strictness included: a bool or
    string latitude, a float ``t``), and reads the same values."""
    raw = msgpack.packb(fields)
    fast = p.plain_gps(raw)
    try:
        full = p.decode(raw, p.DRIVER_MESSAGES)
    except p.ProtocolError:
        full = None
    if not isinstance(full, p.Gps):
        assert fast is None
        return
    assert fast == (full.lat, full.lng, full.heading, full.speed, full.t)
    assert all(type(a) is type(b) for a, b in zip(fast, (full.lat, full.lng, full.heading, full.speed, full.t)))


@settings(max_examples=500, deadline=None)
@given(st.floats(-90, 90), st.floats(-180, 180), st.one_of(st.none(), st.floats(0, 360)),
       st.one_of(st.none(), st.floats(0, 100)), st.one_of(st.none(), st.integers(0, 2**53)), st.integers(0, 2**53))
def test_the_fast_path_takes_every_plain_fix(lat, lng, heading, speed, t, seq):
    raw = msgpack.packb({"type": "gps", "lat": lat, "lng": lng, "heading": heading, "speed": speed, "t": t, "seq": seq})
    assert p.plain_gps(raw) == (lat, lng, heading, speed, t)


def test_the_fast_path_leaves_the_rest_to_decode():
    assert p.plain_gps(frame(type="gps", lat=1, lng=2)) == (1.0, 2.0, None, None, None)  # ints read as floats
    for raw in (frame(type="gps", lat=True, lng=2.0), frame(type="gps", lat=1.0, lng=2.0, t=5.0),
                frame(type="gps", lat=1.0), frame(type="ping"), b"\xc1", msgpack.packb([1]),
                frame(type="gps", lat=1.0, lng=2.0, pad="x" * 5000)):
        assert p.plain_gps(raw) is None, raw[:30]


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
