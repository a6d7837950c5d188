"""The socket outbox's bounds (issue 13, item 4), on an injected clock: bytes queued and the age of the
oldest frame not yet handed to the socket, positions latest-wins, catch-ups paced by ``room()``."""

import asyncio

import pytest

from server.gateway import Outbox


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def frame_of(size: int):
    return lambda message: b"x" * size


def outbox(size: int = 100, max_bytes: int = 1000, max_age_s: float = 5.0):
    clock, overflows = Clock(), []
    box = Outbox(frame_of(size), max_bytes, max_age_s, clock)
    box.on_overflow = lambda: overflows.append(clock.now)
    return box, clock, overflows


def test_reliable_frames_overflow_past_the_byte_bound_and_drop_what_they_held():
    box, clock, overflows = outbox()
    for _ in range(10):
        box.send({"type": "status"})
    assert box.queued_bytes == 1000 and not box.overflowed
    box.send({"type": "status"})
    assert box.overflowed and box.closed and overflows == [100.0]
    assert box.queued_bytes == 0 and not box.reliable and box.next_frame() is None
    assert box.counts["outbox_dropped_frames"] == 11  # the ten it held and the one that overflowed it
    box.send({"type": "status"})  # taken no more
    assert box.queued_bytes == 0 and overflows == [100.0] and box.counts["outbox_dropped_frames"] == 11


def test_positions_are_latest_wins_and_keep_the_age_of_the_first_unsent_one():
    box, clock, overflows = outbox()
    box.send_latest(("position", 1), {"n": 1})
    clock.now += 3
    for n in range(50):  # far more than the byte bound, but one per order at a time
        box.send_latest(("position", 1), {"n": n})
    assert box.queued_bytes == 100 and not box.overflowed
    assert box.counts["positions_superseded"] == 50
    assert box.oldest() == 100.0
    clock.now += 2.5
    assert box.check_age(clock.now) and overflows == [105.5]


def test_a_frame_stuck_in_the_write_counts_for_the_age_even_when_nothing_else_waits():
    box, clock, overflows = outbox()
    box.send({"type": "status"})
    assert box.next_frame() is not None  # handed to the writer, which then blocks in flow control
    assert box.queued_bytes == 0 and box.oldest() == 100.0
    clock.now += 5.0
    assert not box.check_age(clock.now)
    clock.now += 0.1
    assert box.check_age(clock.now) and box.overflowed


def test_written_frames_no_longer_age_the_outbox():
    box, clock, overflows = outbox()
    for _ in range(3):
        box.send({"type": "status"})
        frame = box.next_frame()
        box.written()
        assert frame is not None
        clock.now += 4
    assert box.oldest() is None and not box.check_age(clock.now + 100)
    assert box.next_frame() is None and not box.wakeup.is_set()


def test_reliable_frames_go_before_positions_in_order():
    box = Outbox(lambda message: message["id"].encode(), 1000, 5.0, Clock())
    box.send_latest("p", {"id": "p1"})
    box.send({"id": "a"})
    box.send({"id": "b"})
    box.send_latest("p", {"id": "p2"})
    assert [box.next_frame() for _ in range(4)] == [b"a", b"b", b"p2", None]


async def test_room_paces_a_burst_at_the_speed_the_socket_takes_it():
    box, clock, overflows = outbox(max_bytes=1000)
    for _ in range(6):
        box.send({"type": "status"})
    waiter = asyncio.get_running_loop().create_task(box.room())
    await asyncio.sleep(0)
    assert not waiter.done()  # 600 bytes queued > half the bound
    box.next_frame()
    await asyncio.sleep(0)
    assert waiter.done()  # 500: room again
    await asyncio.wait_for(box.room(), 1)
    for _ in range(5):
        box.send({"type": "status"})
    waiter = asyncio.get_running_loop().create_task(box.room())
    await asyncio.sleep(0)
    box.close()  # a closed outbox never keeps anyone waiting
    await asyncio.wait_for(waiter, 1)
    assert not overflows


@pytest.mark.parametrize("max_bytes", [0, 99])
def test_a_frame_larger_than_the_bound_overflows_at_once(max_bytes):
    box, clock, overflows = outbox(max_bytes=max_bytes)
    box.send({"type": "status"})
    assert box.overflowed and overflows
