"""What the ops map costs at 10,000 drivers: each cell's view, each viewer's frame, and the frame's size.

A city of ``--drivers`` online drivers spread over the H3 cells (resolution 6) around a centre, with
pending orders and jobs, held in real :class:`dispatch.cell.CellCore` objects. Times
:func:`dispatch.opsmap.cell_view` over every cell (what the cells compute once a second while anyone
watches) and :func:`dispatch.opsmap.compose_frame` for a viewer of the whole city and for one zoomed on
a single cell (what the front door computes per viewer per second), and the encoded frames' sizes.

    python -m bench.ops_map --drivers 10000 --json results/ops-map.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import h3
import orjson

from dispatch.cell import CellCore, LiveOrder
from dispatch.opsmap import Viewport, cell_view, compose_frame

CENTER = (41.8781, -87.6298)
T0 = 1_800_000_000.0


def city(n_drivers: int, n_orders: int, rings: int, seed: int = 15) -> dict[str, CellCore]:
    """``n_drivers`` idle drivers and ``n_orders`` pending orders at random in the cells within ``rings``."""
    rng = random.Random(seed)
    cells = {cell: CellCore(cell) for cell in h3.grid_disk(h3.latlng_to_cell(*CENTER, 6), rings)}
    ids = sorted(cells)

    def somewhere() -> tuple[str, float, float]:
        cell = rng.choice(ids)
        lat, lng = h3.cell_to_latlng(cell)
        return cell, lat + rng.uniform(-0.01, 0.01), lng + rng.uniform(-0.01, 0.01)

    for i in range(n_drivers):
        cell, lat, lng = somewhere()
        cells[cell].driver_seen(f"driver-{i}", lat, lng, T0)
    for i in range(n_orders):
        cell, lat, lng = somewhere()
        cells[cell].add_order(LiveOrder(i, i, lat, lng, lat + 0.01, lng + 0.01, T0, T0 + 600))
    return cells


def timed_ms(work, repeat: int) -> tuple[float, object]:
    """Median wall time of ``work()`` in ms over ``repeat`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2), result


def run(n_drivers: int, n_orders: int, rings: int, repeat: int) -> dict:
    cells = city(n_drivers, n_orders, rings)
    views_ms, views = timed_ms(lambda: [cell_view(core) for core in cells.values()], repeat)
    whole_ms, whole = timed_ms(lambda: compose_frame(views, None, T0).to_dict(), repeat)
    lat, lng = h3.cell_to_latlng(next(iter(cells)))
    zoomed_view = Viewport(lat - 0.02, lng - 0.03, lat + 0.02, lng + 0.03)
    zoomed_ms, zoomed = timed_ms(lambda: compose_frame(views, zoomed_view, T0).to_dict(), repeat)
    encode_ms, encoded = timed_ms(lambda: orjson.dumps(whole), repeat)
    return {
        "drivers": n_drivers, "pending_orders": n_orders, "cells": len(cells),
        "cell_views_ms_all_cells": views_ms, "view_bytes_all_cells": sum(len(orjson.dumps(v)) for v in views),
        "frame_whole_city_ms": whole_ms, "frame_whole_city_drivers": len(whole["drivers"]),
        "frame_whole_city_bytes": len(encoded), "frame_encode_ms": encode_ms,
        "frame_one_cell_ms": zoomed_ms, "frame_one_cell_drivers": len(zoomed["drivers"]),
        "frame_one_cell_bytes": len(orjson.dumps(zoomed)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ops_map", description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=10_000, help="online drivers (default: 10000)")
    parser.add_argument("--orders", type=int, default=500, help="pending orders (default: 500)")
    parser.add_argument("--rings", type=int, default=3, help="H3 rings of cells around the centre (default: 3, 37 cells)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each step; the median is kept (default: 5)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = run(args.drivers, args.orders, args.rings, args.repeat)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
