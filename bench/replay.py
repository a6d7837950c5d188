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
from dispatch.metrics import solution_metrics
from dispatch.simulator import Solution, replay


def find_instances(paths: list[Path]) -> list[Path]:
    """Instance folders named by ``paths``: each an instance folder or a folder of them."""
    found: list[Path] = []
    for path in paths:
        if (path / "orders.txt").is_file():
            found.append(path)
        else:
            found.extend(sorted(p for p in path.iterdir() if (p / "orders.txt").is_file()))
    return found


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


TABLE_COLUMNS = ("instance", "policy", "delivered", "deliv.%", "CtD mean", "p90", "max", "<=40 %",
                 "bundle", "util", "feasible", "seconds")


def table_row(metrics: dict) -> list[str]:
    """One markdown table row (see ``TABLE_COLUMNS``) for a replay's metrics."""
    ctd = metrics["click_to_door"]
    return [
        metrics["instance"], metrics["policy"], f"{metrics['orders_delivered']}/{metrics['orders']}",
        f"{100 * metrics['delivered_share_of_deliverable']:.2f}", f"{ctd['mean']:.2f}", f"{ctd['p90']:.0f}",
        f"{ctd['max']:.0f}", f"{100 * metrics['within_target_share']:.1f}",
        f"{metrics['bundle_size']['mean']:.2f}", f"{metrics['courier_utilization']['mean']:.2f}",
        "yes" if metrics["feasible"] else "NO", f"{metrics['replay_seconds']:.1f}",
    ]


def markdown_table(rows: list[dict]) -> str:
    """Markdown comparison table of several replays' metrics."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_row(m)) + " |" for m in rows]
    return "\n".join(lines)


def run_replay(folder: Path, policy: str, out: Path | None, epoch: float, progress: bool) -> tuple[dict, Solution]:
    """Replay one instance folder, check it, and (if ``out``) write its files under out/instance/policy."""
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
    metrics.update(replay_seconds=seconds, epoch_minutes=epoch, feasible=not problems, violations=problems[:20])
    if out is not None:
        write_solution(solution, out / instance.name / policy, metrics)
    return metrics, solution


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hexdispatch replay", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="an MDRP instance folder or a folder of them")
    parser.add_argument("--policy", action="append", choices=POLICIES,
                        help="dispatch policy (repeat for several; default: slack)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT/<instance>/<policy>/ solution files")
    parser.add_argument("--epoch", type=float, default=1.0, help="simulated minutes between decisions")
    parser.add_argument("--match", default=None, help="only instances whose name contains this text")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    """Replay every instance under the given paths with every chosen policy; 1 if any is infeasible."""
    args = build_parser().parse_args(argv)
    policies = args.policy or ["slack"]
    folders = [f for f in find_instances(args.paths) if args.match is None or args.match in f.name]
    if not folders:
        print("hexdispatch replay: no MDRP instance found", file=sys.stderr)
        return 2
    rows = []
    for folder in tqdm(folders, desc="instances", disable=args.quiet or len(folders) == 1):
        for policy in policies:
            metrics, _ = run_replay(folder, policy, args.out, args.epoch, not args.quiet)
            rows.append(metrics)
            for problem in metrics["violations"]:
                print(f"{folder.name} {policy}: INFEASIBLE: {problem}", file=sys.stderr)
    table = markdown_table(rows)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "comparison.md").write_text(table + "\n")
    return 0 if all(m["feasible"] for m in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
