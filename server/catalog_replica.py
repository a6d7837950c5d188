"""An in-memory, per-process replica of the restaurants, answering nearby searches without SQL.

It holds every restaurant as its response JSON (pre-rendered) with what the
filters need (measured: 150,000 restaurants add about 260 MB to a process's
resident memory, load included) and a grid index: each restaurant
has a key (row of 0.0025 degree latitude bands, then column of 0.0025 degree
longitude), and a sorted array of keys turns the bounding box of a search
circle into one contiguous slice per band. A numba kernel
(:mod:`server.nearby_kernel`) computes the exact distances of the rows in those
slices with Postgres's own formula; the result is then the same as the SQL
search (``store.catalog.nearby``): the same filters, nearest first, ties
by id, keyset pagination on (distance, id), and the same response bytes.

Open now is computed at serve time from the opening hours, exactly as the SQL
function ``restaurant_open_at`` does. Name searches (``q``) are left to SQL,
whose ILIKE follows the database's locale.

The replica is kept fresh by :mod:`server.catalog_cache` (Postgres
notifications); it is not consulted while it is not :attr:`CatalogReplica.ready`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np

from server import nearby_kernel
from server.api.common import encode_cursor
from server.api.views import restaurant_view
from server.responses import dumps
from server.schemas import WEEKDAYS
from store.catalog import ALL_RESTAURANTS_SQL, NEARBY_STEPS_M

log = logging.getLogger("hexdispatch.catalog")

#: Grid cell side in degrees (about 280 m of latitude).
CELL_DEG = 0.0025
GRID_COLUMNS = int(round(360 / CELL_DEG))
GRID_ROWS = int(round(180 / CELL_DEG))
#: A restaurant's open-now state, as far as it does not depend on the time.
CLOSED, ALWAYS_OPEN, BY_HOURS = 0, 1, 2
#: Sorts after every real key: the key of a free slot.
FREE_KEY = np.iinfo(np.int64).max
EARTH_RADIUS_M = 6371008.8
#: Added to every search radius when computing its bounding box, so rounding can never lose a row.
BOX_MARGIN_M = 1.0
#: Rows per fetch of the full load, and per step of building (between yields to the event loop).
LOAD_CHUNK_ROWS = 5000
BUILD_CHUNK_ROWS = 500
#: The end of an item without a delivery-time quote.
NO_ETA = b',"delivery_eta":null}'


def grid_key(lat: np.ndarray | float, lng: np.ndarray | float):
    """The grid key of each point (rows of latitude bands, then longitude columns)."""
    row = np.clip(np.floor((np.asarray(lat, dtype=np.float64) + 90.0) / CELL_DEG), 0, GRID_ROWS - 1)
    column = np.clip(np.floor((np.asarray(lng, dtype=np.float64) + 180.0) / CELL_DEG), 0, GRID_COLUMNS - 1)
    return row.astype(np.int64) * GRID_COLUMNS + column.astype(np.int64)


def _row_of(lat: float) -> int:
    return int(min(max(math.floor((lat + 90.0) / CELL_DEG), 0), GRID_ROWS - 1))


def _column_of(lng: float) -> int:
    return int(min(max(math.floor((lng + 180.0) / CELL_DEG), 0), GRID_COLUMNS - 1))


def box_key_ranges(lat: float, lng: float, radius_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive key ranges holding every point within ``radius_m`` of (lat, lng).

    The bounding box on the sphere (minimum and maximum latitude, and the
    widest longitude span, which is ``asin(sin r / cos lat)``), split where it
    crosses the antimeridian and widened to all longitudes when it reaches a pole.
    """
    r = (radius_m + BOX_MARGIN_M) / EARTH_RADIUS_M
    dlat = math.degrees(r)
    lat_lo, lat_hi = lat - dlat, lat + dlat
    spans: list[tuple[float, float]]
    if lat_lo <= -90.0 or lat_hi >= 90.0 or r >= math.pi / 2:
        spans = [(-180.0, 180.0)]
    else:
        dlng = math.degrees(math.asin(min(1.0, math.sin(r) / math.cos(math.radians(lat)))))
        lo, hi = lng - dlng, lng + dlng
        if dlng >= 180.0:
            spans = [(-180.0, 180.0)]
        elif lo < -180.0:
            spans = [(lo + 360.0, 180.0), (-180.0, hi)]
        elif hi > 180.0:
            spans = [(lo, 180.0), (-180.0, hi - 360.0)]
        else:
            spans = [(lo, hi)]
    rows = np.arange(_row_of(max(lat_lo, -90.0)), _row_of(min(lat_hi, 90.0)) + 1, dtype=np.int64) * GRID_COLUMNS
    lows = np.concatenate([rows + _column_of(a) for a, _ in spans])
    highs = np.concatenate([rows + _column_of(b) for _, b in spans])
    return lows, highs


class OpenClock:
    """Whether restaurants are open at one instant, as ``restaurant_open_at`` decides it in SQL.

    Local weekday and HH:MM are computed once per time zone.
    """

    def __init__(self, at: dt.datetime):
        self.at = at
        self._local: dict[str, tuple[str, str]] = {}

    def local(self, tz: str) -> tuple[str, str]:
        found = self._local.get(tz)
        if found is None:
            t = self.at.astimezone(ZoneInfo(tz))
            found = self._local[tz] = (WEEKDAYS[t.weekday()], f"{t.hour:02d}:{t.minute:02d}")
        return found

    def is_open(self, is_open: bool, hours: dict | None, tz: str) -> bool:
        if not is_open:
            return False
        if hours is None:
            return True
        day, hhmm = self.local(tz)
        return any(opens <= hhmm < closes for opens, closes in hours.get(day) or ())


class CatalogReplica:
    """Every restaurant of the database, in memory, with a grid index for nearby searches.

    Rows live in slots (arrays indexed by slot); ``_order`` lists the slots by
    grid key. Every method runs on the event loop, so a search never sees a
    half-applied change.
    """

    def __init__(self):
        #: True once loaded and while kept fresh; searches fall back to SQL otherwise.
        self.ready = False
        self.loaded_at: float | None = None
        #: Called with ``(restaurant_ids, records)`` after each change (``apply``'s arguments), and with
        #: ``(None, records)`` when ``load`` replaced everything: how others (the service area) follow the catalog.
        self.listeners: list = []
        self._set_arrays(0)

    def _set_arrays(self, capacity: int) -> None:
        self._slot_of: dict[int, int] = {}
        #: (cuisine tags, opening hours, time zone): what filters and open-now need.
        self._meta: list[tuple[list, dict | None, str] | None] = [None] * capacity
        #: The response JSON of each row around its open_now value (see :func:`_fragment`).
        self._fragments: list[tuple[bytes, bytes] | None] = [None] * capacity
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._lat = np.zeros(capacity, dtype=np.float64)
        self._lng = np.zeros(capacity, dtype=np.float64)
        self._radius = np.zeros(capacity, dtype=np.float64)
        self._prep = np.zeros(capacity, dtype=np.float64)
        self._keys = np.full(capacity, FREE_KEY, dtype=np.int64)
        #: ALWAYS_OPEN, CLOSED (its switch is off) or BY_HOURS (decided at serve time).
        self._open = np.zeros(capacity, dtype=np.int8)
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._order = np.zeros(0, dtype=np.int64)
        self._sorted_keys = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._slot_of)

    # ------------------------------------------------------------------ loading and changes

    async def load(self, pool: asyncpg.Pool, still_wanted=lambda: True) -> bool:
        """Replace the contents with every restaurant in the database (a consistent snapshot).

        Reads with a server-side cursor, yielding to the event loop between
        chunks; the old contents keep serving until the swap. Returns whether
        the new contents were installed (``still_wanted()`` is asked at the end).
        """
        started = time.perf_counter()
        nearby_kernel.warm_up()
        records: list[asyncpg.Record] = []
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(ALL_RESTAURANTS_SQL)
            while chunk := await cursor.fetch(LOAD_CHUNK_ROWS):
                records.extend(chunk)
        if not still_wanted():
            return False
        fresh = CatalogReplica()
        fresh._set_arrays(len(records) + max(1024, len(records) // 4))
        for start in range(0, len(records), BUILD_CHUNK_ROWS):
            fresh._write(records[start:start + BUILD_CHUNK_ROWS])
            await asyncio.sleep(0)
        fresh._reindex()
        if not still_wanted():
            return False
        for name in ("_slot_of", "_meta", "_fragments", "_ids", "_lat", "_lng", "_radius", "_prep", "_keys", "_open",
                     "_free", "_order", "_sorted_keys"):
            setattr(self, name, getattr(fresh, name))
        self.loaded_at = time.monotonic()
        for listener in self.listeners:
            listener(None, records)
        log.info("catalog replica: %d restaurants loaded in %.2f s", len(records), time.perf_counter() - started)
        return True

    def apply(self, restaurant_ids, records) -> None:
        """Install the current ``records`` of ``restaurant_ids``; ids without a record were deleted."""
        present = {r["id"] for r in records}
        structural = self._write(records)
        for restaurant_id in restaurant_ids:
            if restaurant_id not in present and restaurant_id in self._slot_of:
                slot = self._slot_of.pop(restaurant_id)
                self._meta[slot] = self._fragments[slot] = None
                self._keys[slot] = FREE_KEY
                self._free.append(slot)
                structural = True
        if structural:
            self._reindex()
        for listener in self.listeners:
            listener(restaurant_ids, records)

    def positions(self) -> list[tuple[int, float, float, float]]:
        """``(id, lat, lng, delivery_radius_m)`` of every restaurant held."""
        slots = list(self._slot_of.values())
        return list(zip(self._ids[slots].tolist(), self._lat[slots].tolist(), self._lng[slots].tolist(),
                        self._radius[slots].tolist()))

    def position(self, restaurant_id: int) -> tuple[float, float] | None:
        """A restaurant's (lat, lng), if held."""
        slot = self._slot_of.get(restaurant_id)
        return None if slot is None else (float(self._lat[slot]), float(self._lng[slot]))

    def _write(self, records) -> bool:
        """Store ``records`` in their slots (new ones in free slots); True if the index must be rebuilt."""
        structural = False
        for record in records:
            slot = self._slot_of.get(record["id"])
            key = int(grid_key(record["latitude"], record["longitude"]))
            if slot is None:
                if not self._free:
                    self._grow()
                slot = self._free.pop()
                self._slot_of[record["id"]] = slot
                structural = True
            elif self._keys[slot] != key:
                structural = True
            self._meta[slot] = (record["cuisine_tags"], record["opening_hours"], record["timezone"])
            self._fragments[slot] = _fragment(record)
            self._ids[slot] = record["id"]
            self._lat[slot] = record["latitude"]
            self._lng[slot] = record["longitude"]
            self._radius[slot] = record["delivery_radius_m"]
            self._prep[slot] = record["prep_minutes"]
            self._keys[slot] = key
            self._open[slot] = (CLOSED if not record["is_open"]
                                else ALWAYS_OPEN if record["opening_hours"] is None else BY_HOURS)
        return structural

    def _grow(self) -> None:
        old = len(self._keys)
        extra = max(1024, old // 2)
        self._meta.extend([None] * extra)
        self._fragments.extend([None] * extra)
        self._ids = np.concatenate([self._ids, np.zeros(extra, dtype=np.int64)])
        self._lat = np.concatenate([self._lat, np.zeros(extra)])
        self._lng = np.concatenate([self._lng, np.zeros(extra)])
        self._radius = np.concatenate([self._radius, np.zeros(extra)])
        self._prep = np.concatenate([self._prep, np.zeros(extra)])
        self._keys = np.concatenate([self._keys, np.full(extra, FREE_KEY, dtype=np.int64)])
        self._open = np.concatenate([self._open, np.zeros(extra, dtype=np.int8)])
        self._free.extend(range(old + extra - 1, old - 1, -1))

    def _reindex(self) -> None:
        order = np.argsort(self._keys, kind="stable")
        self._order = order[: len(self._slot_of)]
        self._sorted_keys = self._keys[self._order]

    # ------------------------------------------------------------------ searching

    def nearby(
        self,
        *,
        lat: float,
        lng: float,
        radius_m: float,
        cuisine: str | None,
        open_now: bool,
        after: tuple[float, int] | None,
        limit: int,
        clock: OpenClock,
    ) -> list[tuple[int, float, bool]]:
        """(slot, distance, open now) of the restaurants ``catalog.nearby`` would return, in its order.

        Same widening radii as the SQL search (they only bound the work: the
        answer is the nearest ``limit`` rows either way).
        """
        after_distance, after_id = after if after is not None else (0.0, 0)
        floor = after_distance if after is not None else 0.0
        radii = [r for r in NEARBY_STEPS_M if floor < r < radius_m] + [float(radius_m)]
        found: list[tuple[int, float, bool]] = []
        for search_radius in radii:
            found = self._search(lat, lng, search_radius, cuisine, open_now, after is not None, after_distance,
                                 after_id, limit, clock)
            if len(found) >= limit:
                break
        return found

    def _search(self, lat, lng, search_radius, cuisine, open_now, has_after, after_distance, after_id, limit,
                clock) -> list[tuple[int, float, bool]]:
        lows, highs = box_key_ranges(lat, lng, search_radius)
        starts = np.searchsorted(self._sorted_keys, lows, side="left")
        stops = np.searchsorted(self._sorted_keys, highs, side="right")
        slots, distances = nearby_kernel.empty_outputs(int((stops - starts).sum()))
        n = nearby_kernel.scan(starts, stops, self._order, self._lat, self._lng, self._radius, self._ids,
                               float(lat), float(lng), float(search_radius), has_after, float(after_distance),
                               int(after_id), 2.0, slots, distances)
        slots, distances = slots[:n], distances[:n]
        if cuisine is not None:
            meta = self._meta
            keep = np.fromiter((cuisine in meta[s][0] for s in slots.tolist()), bool, n)
            slots, distances = slots[keep], distances[keep]
        if open_now:
            # Closed rows go; rows with opening hours are decided below, in distance order.
            keep = self._open[slots] != CLOSED
            slots, distances = slots[keep], distances[keep]
        elif len(slots) > limit:
            # Only rows up to the limit-th distance (ties included) can be on the page.
            cut = np.partition(distances, limit - 1)[limit - 1]
            near = distances <= cut
            slots, distances = slots[near], distances[near]
        ranked = np.lexsort((self._ids[slots], distances))
        if not open_now:
            ranked = ranked[:limit]
        found = []
        for slot, distance, state in zip(slots[ranked].tolist(), distances[ranked].tolist(),
                                         self._open[slots[ranked]].tolist()):
            if state == BY_HOURS:
                _, hours, tz = self._meta[slot]
                is_open = clock.is_open(True, hours, tz)
            else:
                is_open = state == ALWAYS_OPEN
            if open_now and not is_open:
                continue
            found.append((slot, distance, is_open))
            if len(found) >= limit:
                break
        return found

    # ------------------------------------------------------------------ rendering

    def quote_points(self, found: list[tuple[int, float, bool]], limit: int) -> list[tuple[float, float, float]]:
        """``(lat, lng, prep_minutes)`` of the restaurants on the page (what delivery-time quotes need)."""
        slots = [slot for slot, _, _ in found[:limit]]
        return list(zip(self._lat[slots].tolist(), self._lng[slots].tolist(), self._prep[slots].tolist()))

    def page_bytes(self, found: list[tuple[int, float, bool]], limit: int, etas: list | None = None) -> bytes:
        """The JSON page ``{"items": [...], "next_cursor": ...}`` exactly as the SQL path renders it.

        ``found`` holds one row more than ``limit`` when there is a next page; ``etas`` holds each item's
        ``delivery_eta`` (None or missing: null).
        """
        etas = etas or ()
        items = [self._item(slot, distance, is_open, etas[i] if i < len(etas) else None)
                 for i, (slot, distance, is_open) in enumerate(found[:limit])]
        cursor = None
        if len(found) > limit:
            slot, distance, _ = found[limit - 1]
            cursor = encode_cursor(distance, int(self._ids[slot]))
        return b'{"items":[' + b",".join(items) + b'],"next_cursor":' + dumps(cursor) + b"}"

    def _item(self, slot: int, distance: float, is_open: bool, eta: dict | None) -> bytes:
        prefix, suffix = self._fragments[slot]
        return (prefix + (b"true" if is_open else b"false") + suffix + dumps(round(distance, 1))
                + (NO_ETA if eta is None else b',"delivery_eta":' + dumps(eta) + b"}"))


def _fragment(record: asyncpg.Record) -> tuple[bytes, bytes]:
    """``restaurant_view`` of the record as JSON around its open_now value: (up to it, after it)."""
    view = restaurant_view(record, open_now=False)
    keys = list(view)
    at = keys.index("open_now")
    before = dumps({k: view[k] for k in keys[:at]})[1:-1]
    after = dumps({k: view[k] for k in keys[at + 1:]})[1:-1]
    prefix = b"{" + (before + b"," if before else b"") + b'"open_now":'
    suffix = (b"," + after if after else b"") + b',"distance_m":'
    return prefix, suffix
