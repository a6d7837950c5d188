"""The loss accounting of ``hexdispatch bench chaos``: pure functions over what the clients saw and the audit trail.

Nothing here does I/O or reads a clock: the bench gathers the records (the
load processes' :class:`clients.city.Tally`, every ``order_events`` row of
the acknowledged orders, the phases' times) and these functions say, per
phase, what went wrong. A phase is the control run before the first fault,
then each fault from its injection until the next one's (or the end of the
load). Each problem is charged to the phase in which it happened:

* a **lost order** (acknowledged by ``POST /v1/orders``, then missing from
  the audit trail or neither delivered nor cancelled by the end) to the
  phase of its last event (where it got stuck), or of its placement when
  the server has no record of it at all;
* a **lost status event** (in the audit trail, older than the moment the
  customer stopped following minus a grace, never received) to the phase of
  the event;
* a **double assignment** (an order assigned while a driver already held
  it, or a driver given a second job while one was open) to the phase of
  the assignment that doubled;
* a **stranded order** (open when a phase's check ran, and quiet for
  ``stall_s`` before it: no event, and not waiting for its food) to the
  phase whose check found it first.

Events are dicts with ``seq``, ``type``, ``status``, ``at`` (unix s), and
for ``assign`` events ``driver_id`` and ``job_id``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from clients.city import DELIVERY_GRACE_S, assigned_while_held, missed_events
from dispatch.lifecycle import TERMINAL_STATUSES


@dataclass(frozen=True)
class Phase:
    """From ``start`` (unix s) until the next phase's start: the control run or one fault and its recovery."""

    name: str
    start: float


def phase_at(phases: list[Phase], at: float) -> str:
    """The name of the phase ``at`` falls in (times before the first phase belong to the first)."""
    starts = [p.start for p in phases]
    return phases[max(0, bisect.bisect_right(starts, at) - 1)].name


def _by_phase(phases: list[Phase], items) -> dict[str, list]:
    """``{phase name: [item, ...]}`` for ``(at, item)`` pairs, every phase present."""
    grouped: dict[str, list] = {p.name: [] for p in phases}
    for at, item in items:
        grouped[phase_at(phases, at)].append(item)
    return grouped


def is_terminal(events: list[dict], by: float = math.inf) -> bool:
    """Whether the order was delivered or cancelled at or before ``by``."""
    return any(e["status"] in TERMINAL_STATUSES and e["at"] <= by for e in events)


def lost_orders(phases: list[Phase], placed_at: dict[int, float], events: dict[int, list[dict]],
                unfinished_is_lost: bool = True) -> dict[str, list]:
    """Acknowledged orders the audit trail lacks, or (``unfinished_is_lost``: after a drain) that never reached
    delivered or cancelled."""
    lost = []
    for order_id, placed in placed_at.items():
        trail = events.get(order_id, [])
        if not trail:
            lost.append((placed, order_id))
        elif unfinished_is_lost and not is_terminal(trail):
            lost.append((trail[-1]["at"], order_id))
    return _by_phase(phases, lost)


def lost_status_events(phases: list[Phase], events: dict[int, list[dict]], seen_seqs: dict[int, list[int]],
                       followed_until: dict[int, float]) -> dict[str, list]:
    """``(order id, seq)`` of every status event a following customer should have received and did not.

    A customer follows its order until it ends; one still following when the
    load stopped counts up to then (``followed_until``); an order nobody
    followed (absent from ``followed_until``) is not judged here.
    """
    missed = []
    for order_id, until in followed_until.items():
        for event in missed_events(events.get(order_id, []), seen_seqs.get(order_id, ()), until - DELIVERY_GRACE_S):
            missed.append((event["at"], (order_id, event["seq"])))
    return _by_phase(phases, missed)


def events_of_type(phases: list[Phase], events: dict[int, list[dict]], kind: str) -> dict[str, list[int]]:
    """Orders with an event of type ``kind`` (e.g. ``unassign``: a re-dispatch), per phase of the event."""
    return _by_phase(phases, [(e["at"], order_id) for order_id, trail in events.items() for e in trail
                              if e["event"] == kind])


def double_assignments(phases: list[Phase], events: dict[int, list[dict]]) -> dict[str, list]:
    """Orders assigned while held, and drivers given a job while another of theirs was open.

    A job (one ``job_id``, a bundle of orders) is open from its first
    ``assign`` until each of its orders is delivered, cancelled or unassigned.
    """
    doubled = [(e["at"], f"order {order_id} assigned twice (seq {e['seq']})")
               for order_id, trail in events.items() for e in assigned_while_held(trail)]
    jobs: dict[tuple[str, str], list[float]] = {}  # (driver, job) -> [opened, closed]
    open_legs: dict[tuple[str, str], set[int]] = {}
    for order_id, trail in events.items():
        holder = None
        for event in trail:
            if event["event"] == "assign":
                holder = (event.get("driver_id"), event.get("job_id"))
                span = jobs.setdefault(holder, [event["at"], math.inf])
                span[0] = min(span[0], event["at"])
                open_legs.setdefault(holder, set()).add(order_id)
            elif holder is not None and (event["event"] == "unassign" or event["status"] in TERMINAL_STATUSES):
                legs = open_legs[holder]
                legs.discard(order_id)
                if not legs:
                    jobs[holder][1] = event["at"]
                holder = None
    by_driver: dict[str, list[tuple[float, float, str]]] = {}
    for (driver, job), (opened, closed) in jobs.items():
        by_driver.setdefault(driver, []).append((opened, closed, job))
    for driver, spans in by_driver.items():
        spans.sort()
        latest_close, latest_job = -math.inf, None
        for opened, closed, job in spans:
            if opened < latest_close:
                doubled.append((opened, f"driver {driver} given job {job} while job {latest_job} was open"))
            if closed > latest_close:
                latest_close, latest_job = closed, job
    return _by_phase(phases, doubled)


def stranded_orders(checks: list[tuple[str, float]], placed_at: dict[int, float], events: dict[int, list[dict]],
                    stall_s: float, ready_estimate: dict[int, float] | None = None) -> dict[str, list[int]]:
    """Per check ``(phase name, at)``: orders open at ``at`` and quiet for ``stall_s`` before it; each order is
    charged to the first check that finds it stranded.

    An order is quiet since its last event, or since its food's ready
    estimate while its kitchen has not marked it ready (waiting for the food
    is not being stranded), or since its placement when the server has no
    record of it.
    """
    ready_estimate = ready_estimate or {}
    found: dict[str, list[int]] = {name: [] for name, _ in checks}
    charged: set[int] = set()
    for name, at in checks:
        for order_id, placed in placed_at.items():
            if order_id in charged:
                continue
            trail = [e for e in events.get(order_id, []) if e["at"] <= at]
            if is_terminal(trail):
                continue
            quiet_since = max([placed, *(e["at"] for e in trail)])
            if not any(e["event"] == "mark_ready" for e in trail):
                quiet_since = max(quiet_since, ready_estimate.get(order_id, placed))
            if quiet_since <= at - stall_s:
                found[name].append(order_id)
                charged.add(order_id)
    return found


def offer_latency_by_order(placed_at: dict[int, float], first_offer: dict[int, tuple[float, dict]],
                           deliberate: tuple[str, ...]) -> dict[int, tuple[float, float]]:
    """Order id -> ``(placed at, placement-to-offer ms)``; an order never offered counts as infinitely late;
    orders the cell held back on purpose (a wait in one of ``deliberate``) are left out."""
    latencies = {}
    for order_id, placed in placed_at.items():
        offer = first_offer.get(order_id)
        if offer is None:
            latencies[order_id] = (placed, math.inf)
        elif not any(offer[1].get(reason, 0.0) > 0 for reason in deliberate):
            latencies[order_id] = (placed, (offer[0] - placed) * 1000)
    return latencies


def offer_latency_ms(placed_at: dict[int, float], first_offer: dict[int, tuple[float, dict]],
                     deliberate: tuple[str, ...]) -> list[tuple[float, float]]:
    """:func:`offer_latency_by_order`'s ``(placed at, placement-to-offer ms)`` pairs, in placement order."""
    return sorted(offer_latency_by_order(placed_at, first_offer, deliberate).values())


def rolling_p99(latencies: list[tuple[float, float]], start: float, end: float, window_s: float,
                step_s: float = 1.0, min_orders: int = 3) -> list[tuple[float, float]]:
    """``(window start, p99 ms)`` of the orders placed in ``[t, t + window_s)``, for t from ``start`` to
    ``end - window_s`` by ``step_s``; windows with fewer than ``min_orders`` orders are skipped."""
    times = [at for at, _ in latencies]
    series = []
    t = start
    while t + window_s <= end + 1e-9:
        first, last = bisect.bisect_left(times, t), bisect.bisect_left(times, t + window_s)
        values = [ms for _, ms in latencies[first:last]]
        if len(values) >= min_orders:
            series.append((t, p99(values)))
        t += step_s
    return series


def p99(values: list[float]) -> float:
    """The 99th percentile (linear interpolation), infinite when an infinite value reaches it."""
    ordered = sorted(values)
    rank = 0.99 * (len(ordered) - 1)
    low, high = ordered[math.floor(rank)], ordered[math.ceil(rank)]
    if math.isinf(high):
        return math.inf
    return float(low + (high - low) * (rank - math.floor(rank)))


def recovery_s(series: list[tuple[float, float]], injected_at: float, target_ms: float) -> float | None:
    """Seconds from the injection until the first window of orders placed from then on whose p99 is under
    ``target_ms`` (None when no window after the injection is)."""
    for start, value in series:
        if start >= injected_at and value < target_ms:
            return start - injected_at
    return None
