"""Clients' reconnect back-off (``clients.ws.reconnect_delay``): exponential, full jitter, slower when busy."""

import random

from clients.ws import BUSY_FLOOR_S, reconnect_delay


def delays(attempt: int, busy: bool, n: int = 2000, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [reconnect_delay(attempt, busy, 0.1, 5.0, rng) for _ in range(n)]


def test_delays_spread_over_the_whole_step_from_zero():
    """Full jitter: a storm of clients reconnecting spreads over [0, step], not over its upper half."""
    first = delays(0, busy=False)
    assert min(first) >= 0.0 and max(first) <= 0.1
    assert min(first) < 0.01 and max(first) > 0.09  # both ends of [0, 0.1] are reached
    assert sum(d < 0.05 for d in first) > 800  # about half below the middle


def test_the_step_doubles_per_attempt_up_to_the_cap():
    for attempt, step in [(1, 0.2), (2, 0.4), (3, 0.8), (5, 3.2), (6, 5.0), (40, 5.0)]:
        spread = delays(attempt, busy=False)
        assert max(spread) <= step and max(spread) > 0.9 * step, attempt


def test_a_busy_server_is_left_alone_for_longer():
    """After 1013/1012 (or HTTP 429/503) the step starts at BUSY_FLOOR_S, not at the minimum."""
    busy = delays(0, busy=True)
    assert max(busy) <= BUSY_FLOOR_S and max(busy) > 0.9 * BUSY_FLOOR_S
    assert max(delays(3, busy=True)) > 0.9 * 5.0
