"""``hexdispatch replay``: replay MDRP instances through the dispatch core.

The I/O shell around :mod:`dispatch.simulator`: reads instance folders, shows
progress, writes the three solution files the public MDRP evaluator reads plus
``metrics.json``, runs the feasibility checker on every replay, and prints a
comparison table across instances and policies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from dispatch.feasibility import check_solution
from dispatch.matcher import POLICIES, MatchParams
from dispatch.mdrp import INSTANCE_FILES, Instance, parse_instance
from dispatch.eta import EtaCalibration
from dispatch.metrics import ETA_MOMENTS, day_of, eta_metrics, solution_metrics
from dispatch.simulator import Solution, replay
from server.cli import parser_for


def find_instances(paths: list[Path]) -> list[Path]:
    """Instance folders named by ``paths``: each an instance folder or a folder of them (missing ones hold none)."""
    found: list[Path] = []
    for path in paths:
        if (path / "orders.txt").is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if (p / "orders.txt").is_file()))
    return found


#: Where the MDRP instances live, said when none is found.
WHERE_THE_DATA_IS = (
    "The MDRP instances (Grubhub's public Meal Delivery Routing Problem days, Reyes et al. 2018) are not part of "
    "this repository: 144 of them are in ../shared/mdrp/instances beside it (../shared/mdrp/README.md describes "
    "them); all 240 are published in the public_instances folder of github.com/grubhub/mdrplib. Give a folder "
    "of instances, or one instance folder (holding orders.txt, couriers.txt, restaurants.txt, "
    "instance_parameters.txt).")


def load_instance(folder: Path) -> Instance:
    """Read and parse one MDRP instance folder."""
    return parse_instance(folder.name, {name: (folder / name).read_text() for name in INSTANCE_FILES})


def _time(value: float) -> str:
    """Whole minutes as integers; fractional ones (live replays) exactly, so files re-read equal."""
    return f"{value:g}" if float(value).is_integer() else repr(float(value))


def write_solution(solution: Solution, folder: Path, metrics: dict) -> None:
    """Write the evaluator's three solution files and ``metrics.json`` into ``folder``."""
    inst = solution.instance
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["assignment_time pickup_time courier orders"]
    for a in solution.assignments:
        ids = " ".join(inst.order_ids[o] for o in a.orders)
        lines.append(f"{_time(a.assignment_time)} {_time(a.pickup_time)} {inst.courier_ids[a.courier]} {ids}")
    (folder / "solution_info_assignments.txt").write_text("\n".join(lines) + "\n")
    lines = ["order placement_time ready_time pickup_time dropoff_time courier"]
    for o in sorted(range(inst.n_orders), key=lambda o: (solution.dropoff_time[o], o)):
        if solution.order_courier[o] >= 0:
            lines.append(" ".join([
                inst.order_ids[o], _time(inst.order_placed[o]), _time(inst.order_ready[o]),
                _time(solution.pickup_time[o]), _time(solution.dropoff_time[o]),
                inst.courier_ids[solution.order_courier[o]],
            ]))
    (folder / "solution_info_orders.txt").write_text("\n".join(lines) + "\n")
    lines = ["courier departure_time origin destination"]
    for m in sorted(solution.moves, key=lambda m: m.courier):  # stable: execution order per courier
        lines.append(f"{inst.courier_ids[m.courier]} {_time(m.departure_time)} {m.origin} {m.destination}")
    (folder / "solution_info_couriers.txt").write_text("\n".join(lines) + "\n")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


#: What each column of the comparison table means, printed under it.
COLUMN_MEANINGS = {
    "delivered": "orders delivered / orders in the instance",
    "deliv.%": "share of the deliverable orders delivered (some orders no courier can reach in time)",
    "CtD mean": "mean click-to-door, minutes from placement to drop-off",
    "p90": "90th percentile of click-to-door, minutes",
    "p99": "99th percentile of click-to-door, minutes",
    "max": "longest click-to-door, minutes",
    ">90 (floor<=90)": "orders past the 90-minute maximum whose own floor (prep + direct ride + service) is under it",
    "<=40 %": "share of delivered orders within the 40-minute target",
    "bundle": "mean orders per pickup",
    "util": "mean courier utilisation: driving and service time over shift length",
    "feasible": "whether the solution passes every MDRP rule (dispatch/feasibility.py)",
    "seconds": "wall-clock seconds the replay took",
}

TABLE_COLUMNS = ("instance", "policy", "delivered", "deliv.%", "CtD mean", "p90", "p99", "max", ">90 (floor<=90)",
                 "<=40 %", "bundle", "util", "feasible", "seconds")


def table_row(metrics: dict) -> list[str]:
    """One markdown table row (see ``TABLE_COLUMNS``) for a replay's metrics."""
    ctd = metrics["click_to_door"]
    return [
        metrics["instance"], metrics["policy"], f"{metrics['orders_delivered']}/{metrics['orders']}",
        f"{100 * metrics['delivered_share_of_deliverable']:.2f}", f"{ctd['mean']:.2f}", f"{ctd['p90']:.0f}",
        f"{metrics['tail']['click_to_door_p99']:.1f}", f"{ctd['max']:.0f}", str(metrics["tail"]["over_max_not_floor"]),
        f"{100 * metrics['within_target_share']:.1f}",
        f"{metrics['bundle_size']['mean']:.2f}", f"{metrics['courier_utilization']['mean']:.2f}",
        "yes" if metrics["feasible"] else "NO", f"{metrics['replay_seconds']:.1f}",
    ]


def markdown_table(rows: list[dict]) -> str:
    """Markdown comparison table of several replays' metrics."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_row(m)) + " |" for m in rows]
    return "\n".join(lines)


def column_legend() -> str:
    """One line per table column (:data:`COLUMN_MEANINGS`), to print under the table."""
    return "\n".join(f"* {name}: {meaning}" for name, meaning in COLUMN_MEANINGS.items())


ETA_COLUMNS = ("instance", "policy", "estimate at", "orders", "MAE min", "p90 abs err", "within +/-5 %", "bias min",
               "p10-p90 coverage %")


def eta_table(rows: list[dict], moments: tuple[str, ...] = ETA_MOMENTS) -> str:
    """Markdown table of the drop-off estimates' errors (``metrics["eta"]``), one line per moment (with the share
    inside the p10-p90 range where ``<moment>_range_coverage`` gives it)."""
    lines = ["| " + " | ".join(ETA_COLUMNS) + " |", "|" + "---|" * len(ETA_COLUMNS)]
    for m in rows:
        for moment in moments:
            e = m["eta"][moment]
            coverage = m["eta"].get(f"{moment}_range_coverage")
            coverage = "" if coverage is None else f"{100 * coverage:.1f}"
            lines.append("| " + " | ".join([m["instance"], m["policy"], moment, str(e["orders"]), f"{e['mae']:.2f}",
                                            f"{e['p90_abs']:.2f}", f"{100 * e['within_5']:.1f}", f"{e['bias']:+.2f}",
                                            coverage]) + " |")
    return "\n".join(lines)


DEFAULT_CALIBRATION = Path(__file__).resolve().parent / "results" / "mdrp" / "eta_calibration.json"


def load_calibrations(path: Path | None) -> dict[str, EtaCalibration]:
    """Calibrations keyed by held-out day (and ``"all"``) from ``path`` (written by ``bench.mdrp_quality``);
    none (raw forecasts) when ``path`` is None."""
    if path is None:
        return {}
    return {day: EtaCalibration.from_json(table) for day, table in json.loads(path.read_text()).items()}


def calibration_for(instance_name: str, calibrations: dict[str, EtaCalibration]) -> EtaCalibration:
    """The calibration fitted without ``instance_name``'s day; raw forecasts if there is none."""
    return calibrations.get(day_of(instance_name), EtaCalibration())


def run_replay(folder: Path, policy: str, out: Path | None, epoch: float, progress: bool,
               calibrations: dict[str, EtaCalibration] | None = None) -> tuple[dict, Solution]:
    """Replay one instance folder, check it, score its delivery-time estimates (calibrated without
    its own day), and (if ``out``) write its files under out/instance/policy."""
    instance = load_instance(folder)
    bar = tqdm(total=int(instance.courier_off.max()), desc=f"{instance.name} {policy}", unit="min",
               leave=False, disable=not progress)

    def on_tick(now: float) -> None:
        bar.update(max(0, int(now) - bar.n))

    started = time.perf_counter()
    solution = replay(instance, policy, MatchParams(), epoch, on_tick)
    seconds = time.perf_counter() - started
    bar.close()
    problems = check_solution(solution)
    metrics = solution_metrics(solution)
    metrics.update(replay_seconds=seconds, epoch_minutes=epoch, feasible=not problems, violations=problems[:20],
                   eta=eta_metrics(solution, calibration_for(instance.name, calibrations or {})))
    if out is not None:
        write_solution(solution, out / instance.name / policy, metrics)
    return metrics, solution


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("hexdispatch replay", __doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="an MDRP instance folder or a folder of them")
    parser.add_argument("--policy", action="append", choices=POLICIES,
                        help="dispatch policy (repeat for several; default: slack)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT/<instance>/<policy>/ solution files")
    parser.add_argument("--epoch", type=float, default=1.0, help="simulated minutes between decisions")
    parser.add_argument("--match", default=None, help="only instances whose name contains this text")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (they are shown only when stderr is a terminal anyway)")
    parser.add_argument("--eta-calibration", type=Path,
                        default=DEFAULT_CALIBRATION if DEFAULT_CALIBRATION.is_file() else None,
                        help="delivery-time calibration JSON from bench.mdrp_quality (default: the committed one); "
                             "each instance is scored with the table fitted without its day")
    return parser


def main(argv: list[str]) -> int:
    """Replay every instance under the given paths with every chosen policy; 1 if any is infeasible."""
    args = build_parser().parse_args(argv)
    policies = args.policy or ["slack"]
    folders = [f for f in find_instances(args.paths) if args.match is None or args.match in f.name]
    if not folders:
        named = ", ".join(str(p) for p in args.paths)
        print(f"hexdispatch replay: no MDRP instance in {named}{' matching ' + repr(args.match) if args.match else ''}."
              f" {WHERE_THE_DATA_IS}", file=sys.stderr)
        return 2
    rows = []
    calibrations = load_calibrations(args.eta_calibration)
    progress = not args.quiet and sys.stderr.isatty()  # bars would flood a log file or a pipe
    for folder in tqdm(folders, desc="instances", disable=not progress or len(folders) == 1):
        for policy in policies:
            metrics, _ = run_replay(folder, policy, args.out, args.epoch, progress, calibrations)
            rows.append(metrics)
            for problem in metrics["violations"]:
                print(f"{folder.name} {policy}: INFEASIBLE: {problem}", file=sys.stderr)
    table = (markdown_table(rows) + "\n\n" + column_legend()
             + "\n\nDrop-off estimates against actual drop-off (minutes):\n\n" + eta_table(rows))
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "comparison.md").write_text(table + "\n")
    return 0 if all(m["feasible"] for m in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
