"""The simulated city's audit of the server's trail (``clients.city``): delivery promises scored from events."""

from clients.city import promise_outcome

T0 = 1_800_000_000.0


def trail(*events: tuple[str, float, dict]) -> list[dict]:
    return [{"event": kind, "at": at, "payload": payload, "seq": i + 1} for i, (kind, at, payload) in enumerate(events)]


def promise(dropoff_at: float, early: float, late: float) -> dict:
    return {"dropoff_at": dropoff_at, "dropoff_early": early, "dropoff_late": late, "basis": "queue"}


def test_a_delivery_is_scored_against_its_first_estimate_not_the_later_ones():
    events = trail(("placed", T0, {}), ("estimate", T0, promise(T0 + 1800, T0 + 1500, T0 + 2400)),
                   ("assign", T0 + 60, {}), ("estimate", T0 + 61, promise(T0 + 2400, T0 + 2300, T0 + 2500)),
                   ("deliver", T0 + 2100, {}))
    error, inside = promise_outcome(events)
    assert error == -5.0 and inside  # promised 30 min, took 35: inside 25-40


def test_a_late_delivery_outside_the_range_and_orders_without_promise_or_delivery():
    late = trail(("placed", T0, {}), ("estimate", T0, promise(T0 + 1800, T0 + 1500, T0 + 2000)),
                 ("deliver", T0 + 2400, {}))
    assert promise_outcome(late) == (-10.0, False)
    assert promise_outcome(trail(("placed", T0, {}), ("deliver", T0 + 900, {}))) is None
    assert promise_outcome(trail(("placed", T0, {}), ("estimate", T0, promise(T0 + 60, T0, T0 + 90)))) is None
