"""Reading an order's status events in tests."""


def lifecycle(events: list[dict], key: str = "event") -> list[dict]:
    """The events that move an order through its lifecycle: all but ``estimate`` events, which a cell gives when
    its delivery estimate moves (``dispatch.eta``), at times that depend on the clock and the cell's load."""
    return [e for e in events if e[key] != "estimate"]


def gapless(events: list[dict]) -> bool:
    """Whether the events' ``seq`` run 1, 2, 3... without a gap or a repeat."""
    return [e["seq"] for e in events] == list(range(1, len(events) + 1))
