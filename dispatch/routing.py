"""Which cell holds a driver, as its front door routes it: hand-over and borrowing rules, sans I/O.

A driver's front door sends its fixes and reports to one cell, its *home*.
The cells decide the work; the front door (``server/gateway/``) executes
these decisions: when a fix lands in another cell, whether to try a
hand-over now (:func:`handover_due`); when a cell's message arrives for the
driver, whether it is delivered, makes the sender the driver's home (the
sender borrowed it), or is an offer to decline because the driver is busy
elsewhere (:func:`route_cell_message`, the double-booking guard). Every
time is passed in.
"""

from __future__ import annotations

from enum import Enum


class Routing(str, Enum):
    DELIVER = "deliver"
    """Pass the message to the driver."""
    ADOPT_THEN_DELIVER = "adopt_then_deliver"
    """The sender borrowed the driver: make it the driver's home, then pass the message on."""
    DECLINE_OFFER = "decline_offer"
    """An offer from a cell not holding this busy driver (a stale registration): decline it for the driver."""
    FOLLOW_REHOME = "follow_rehome"
    """The driver's home lent it to the cell the message names: make that the driver's home."""
    POLL_BORROWER = "poll_borrower"
    """A lend by a cell that is not (or no longer) the driver's home: only start listening to the borrower."""


#: Messages by which only the cell holding a driver gives it work.
WORK = frozenset({"offer", "assigned"})


def route_cell_message(kind: str | None, from_cell: str, home_cell: str | None, connected: bool,
                       holds_orders: bool) -> Routing:
    """What the front door does with a message of ``kind`` from ``from_cell`` for a driver whose home is
    ``home_cell`` (``connected``: its socket is open here; ``holds_orders``: it carries orders of a job).

    Work from another cell means that cell borrowed the driver, except an offer to a driver with orders:
    the driver is busy elsewhere, and the offer is declined rather than the driver double-booked.
    """
    at_home = connected and home_cell == from_cell
    if kind == "rehome":
        return Routing.FOLLOW_REHOME if at_home else Routing.POLL_BORROWER
    if connected and kind in WORK and home_cell != from_cell:
        if kind == "offer" and holds_orders:
            return Routing.DECLINE_OFFER
        return Routing.ADOPT_THEN_DELIVER
    return Routing.DELIVER


def handover_due(home_cell: str | None, here: str, now: float, last_try: float, retry_s: float) -> bool:
    """Whether a fix in cell ``here`` should try to hand the driver over from ``home_cell`` now: it left its
    home, and the last try (or a borrow's hold, see :func:`hold_after_borrow`) is ``retry_s`` old."""
    return home_cell is not None and here != home_cell and now - last_try >= retry_s


def hold_after_borrow(now: float, retry_s: float, borrowed_hold_s: float) -> float:
    """The ``last_try`` to record when a cell borrows a driver at ``now``: by :func:`handover_due`, no hand-over
    back by position for ``borrowed_hold_s`` (it was moved there for an order)."""
    return now + borrowed_hold_s - retry_s
