"""The service area: the cells (at the cell actors' H3 resolution) a deployment serves.

A cell actor costs a process (about 180 MB), so actors are created only where
the deployment works. By default the area follows the restaurants: each
restaurant's cell and every cell within its delivery radius plus an approach
margin (drivers come from a little further than customers live), so a driver
working for any restaurant never leaves it. An operator may instead fix the
area (:class:`Region`, from ``HEXDISPATCH_SERVICE_AREA``); a restaurant's own
cell is then inside only if the region holds it.

Pure: positions and radii in, membership out; the front door keeps it in step
with its catalog replica.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import h3.api.basic_int as h3

from dispatch.cells import owner_cell, rings_covering

#: ``HEXDISPATCH_SERVICE_AREA`` meaning "everywhere" (the cell cap still bounds the actors).
EVERYWHERE = "*"


@dataclass(frozen=True)
class Region:
    """A fixed set of H3 cells of any resolutions (or everywhere): a cell is inside when it,
    or its ancestor at one of the region's resolutions, is one of them."""

    cells: frozenset[int] = frozenset()
    everywhere: bool = False
    resolutions: frozenset[int] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "resolutions", frozenset(h3.get_resolution(c) for c in self.cells))

    @classmethod
    def parse(cls, text: str) -> "Region":
        """A region from H3 indexes (hex) separated by commas, spaces or newlines (``#`` starts a comment),
        or :data:`EVERYWHERE`; ``ValueError`` names the first token that is not a valid cell."""
        tokens = [t for line in text.splitlines() for t in line.split("#", 1)[0].replace(",", " ").split()]
        if tokens == [EVERYWHERE]:
            return cls(everywhere=True)
        if not tokens:
            raise ValueError("no H3 cell given")
        cells = set()
        for token in tokens:
            try:
                cell = h3.str_to_int(token)
            except (ValueError, TypeError):
                cell = 0
            if not cell or not h3.is_valid_cell(cell):
                raise ValueError(f"{token!r} is not an H3 cell index")
            cells.add(cell)
        return cls(frozenset(cells))

    def __contains__(self, cell: int) -> bool:
        if self.everywhere:
            return True
        if cell in self.cells:
            return True
        res = h3.get_resolution(cell)
        return any(h3.cell_to_parent(cell, r) in self.cells for r in self.resolutions if r < res)


def cell_refusal(inside: bool, exists: bool, cells: int, max_cells: int) -> str | None:
    """Why a cell may not be opened, or None when it may: ``outside_service_area`` (not ``inside``), or
    ``cell_capacity`` (it does not exist yet, and the deployment already runs ``cells`` >= ``max_cells``)."""
    if not inside:
        return "outside_service_area"
    if not exists and cells >= max_cells:
        return "cell_capacity"
    return None


class ServiceArea:
    """The cells served at resolution ``res``: restaurant-derived (``region=None``) or a fixed region.

    Restaurants are added, moved and removed one by one (the catalog changes a
    few at a time); the cells they cover are reference-counted, so a change
    costs one k-disk, not a recomputation of the whole area.
    """

    def __init__(self, res: int, margin_m: float, region: Region | None = None):
        self.res = res
        self.margin_m = margin_m
        self.region = region
        #: False until the restaurants were loaded once (see :meth:`contains`).
        self.loaded = region is not None
        self._restaurants: dict[int, tuple[int, int]] = {}  # restaurant id -> (cell, rings)
        self._disks: Counter[tuple[int, int]] = Counter()
        self._cells: Counter[int] = Counter()

    def __len__(self) -> int:
        """Cells in the restaurant-derived area."""
        return len(self._cells)

    def rings(self, delivery_radius_m: float) -> int:
        """Rings around a restaurant's cell the area holds: its delivery radius plus the approach margin, and one
        more because a point belongs to its fine cell's ancestor, which may be the geometric cell's neighbour."""
        if self.region is not None:
            return 0
        return rings_covering(delivery_radius_m + self.margin_m, self.res) + 1

    def replace(self, restaurants: Iterable[tuple[int, float, float, float]]) -> None:
        """Forget every restaurant, then add ``(id, lat, lng, delivery_radius_m)`` of each one."""
        self._restaurants.clear()
        self._disks.clear()
        self._cells.clear()
        for restaurant in restaurants:
            self.put(*restaurant)
        self.loaded = True

    def put(self, restaurant_id: int, lat: float, lng: float, delivery_radius_m: float) -> None:
        """A restaurant was added or changed."""
        disk = (owner_cell(lat, lng, self.res), self.rings(delivery_radius_m))
        if self._restaurants.get(restaurant_id) == disk:
            return
        self.remove(restaurant_id)
        self._restaurants[restaurant_id] = disk
        self._disks[disk] += 1
        if self._disks[disk] == 1:
            self._cells.update(h3.grid_disk(*disk))

    def remove(self, restaurant_id: int) -> None:
        """A restaurant was deleted (unknown ids are ignored)."""
        disk = self._restaurants.pop(restaurant_id, None)
        if disk is None:
            return
        self._disks[disk] -= 1
        if self._disks[disk] == 0:
            del self._disks[disk]
            self._cells.subtract(h3.grid_disk(*disk))
            for cell in [c for c in h3.grid_disk(*disk) if self._cells[c] <= 0]:
                del self._cells[cell]

    def contains(self, cell: int) -> bool:
        """Whether a driver may be served in ``cell``.

        Until the restaurants were loaded once, every cell is (refusing every
        driver because a cache is late would be an outage; the cell cap still
        bounds the actors meanwhile).
        """
        if self.region is not None:
            return cell in self.region
        return not self.loaded or cell in self._cells

    def takes_orders_in(self, restaurant_cell: int) -> bool:
        """Whether an order of a restaurant in ``restaurant_cell`` may be placed.

        A restaurant-derived area holds every restaurant's own cell, whether or
        not this process has heard of the restaurant yet; a fixed region
        decides alone.
        """
        return self.region is None or restaurant_cell in self.region
