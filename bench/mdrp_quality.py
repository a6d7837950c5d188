"""Quality benchmark: every ``o100t100*p100`` MDRP instance under every policy.

Writes ``OUT/quality.md`` (per-instance table, s2 averages, target checks, the
drop-off estimates' error table), ``OUT/quality.json``, ``OUT/click_to_door.png``
(click-to-door distribution per policy), ``OUT/eta_error.png`` (estimate errors per
instance), ``OUT/eta_calibration.json`` (the ``slack`` promise's calibration per
held-out day, and ``all`` for live use), plus each replay's solution files under
``OUT/<instance>/<policy>/``. The placement estimate of an instance is calibrated
only on the other days' replays (leave one day out: both schedules of the day are
held out).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from bench.replay import calibration_for, eta_table, find_instances, markdown_table, run_replay
from dispatch.matcher import POLICIES
from dispatch.eta import LIVE_CALIBRATION_PATH
from dispatch.metrics import ETA_MOMENTS, P99_TARGET, eta_metrics, held_out_calibrations
from server.cli import parser_for

DEFAULT_INSTANCES = Path(__file__).resolve().parents[1].parent / "shared" / "mdrp" / "instances"
INSTANCE_PATTERN = "o100t100"
S2_TARGET_MEAN = 34.0
DELIVERED_TARGET = 0.995
NEAREST_TOLERANCE = 0.5
SLACK_MEANS_BEFORE_ISSUE_14 = {
    "0o100t100s1p100": 31.59, "0o100t100s2p100": 29.34, "1o100t100s1p100": 33.80, "1o100t100s2p100": 30.15,
    "2o100t100s1p100": 30.79, "2o100t100s2p100": 29.76, "3o100t100s1p100": 31.79, "3o100t100s2p100": 29.82,
    "4o100t100s1p100": 36.33, "4o100t100s2p100": 33.03, "5o100t100s1p100": 42.37, "5o100t100s2p100": 36.24,
}
"""Mean click-to-door of ``slack`` before the tail rules (this benchmark at commit c0fdae4)."""
MEAN_TOLERANCE = 0.2
ETA_TARGETS = {"placement": 5.0, "pickup": 2.0}
"""p90 absolute error targets (minutes) of the drop-off estimate, per moment."""
BIAS_TARGET = 1.0


def target_checks(rows: list[dict]) -> list[str]:
    """Markdown lines stating each quality target and whether the ``slack`` replays meet it."""
    by = {(m["instance"], m["policy"]): m for m in rows}
    slack = [m for m in rows if m["policy"] == "slack"]
    lines = []
    worst_share = min(m["delivered_share_of_deliverable"] for m in slack)
    lines.append(f"- feasible on every instance: {all(m['feasible'] for m in rows)}")
    lines.append(f"- delivered >= 99.5% of deliverable orders: min {100 * worst_share:.2f}% "
                 f"-> {'met' if worst_share >= DELIVERED_TARGET else 'NOT met'}")
    gaps = [m["click_to_door"]["mean"] - by[(m["instance"], "nearest")]["click_to_door"]["mean"]
            for m in slack if (m["instance"], "nearest") in by]
    if gaps:
        lines.append(f"- mean click-to-door never > 0.5 min worse than nearest: worst gap {max(gaps):+.2f} min "
                     f"-> {'met' if max(gaps) <= NEAREST_TOLERANCE else 'NOT met'}")
    for policy in POLICIES:
        s2 = [m["click_to_door"]["mean"] for m in rows if m["policy"] == policy and "s2" in m["instance"]]
        if s2:
            verdict = ("met" if np.mean(s2) <= S2_TARGET_MEAN else "NOT met") if policy == "slack" else "reference"
            lines.append(f"- {policy}: mean click-to-door averaged over {len(s2)} s2 days {np.mean(s2):.2f} min "
                         f"({verdict}; target <= {S2_TARGET_MEAN})")
    if slack:
        lines += promise_checks(slack)
    return lines


def promise_checks(slack: list[dict]) -> list[str]:
    """Markdown lines on issue 14's targets for the ``slack`` replays: estimate errors and the tail."""
    lines = []
    for moment, target in ETA_TARGETS.items():
        worst = max(slack, key=lambda m: m["eta"][moment]["p90_abs"])
        value = worst["eta"][moment]["p90_abs"]
        lines.append(f"- p90 absolute error of the drop-off estimate at {moment} < {target:g} min: worst "
                     f"{value:.2f} ({worst['instance']}) -> {'met' if value < target else 'NOT met'}"
                     + "".join(f"; {m['instance']} {m['eta'][moment]['p90_abs']:.1f}"
                               for m in slack if m["eta"][moment]["p90_abs"] >= target))
    worst_bias = max(slack, key=lambda m: abs(m["eta"]["placement"]["bias"]))
    value = worst_bias["eta"]["placement"]["bias"]
    lines.append(f"- bias of the placement estimate within +/-{BIAS_TARGET:g} min: worst {value:+.2f} "
                 f"({worst_bias['instance']}) -> {'met' if abs(value) <= BIAS_TARGET else 'NOT met'}")
    over = {m["instance"]: m["tail"]["over_max_not_floor"] for m in slack if m["tail"]["over_max_not_floor"]}
    lines.append(f"- no order over 90 min unless its floor is: {sum(over.values())} such orders "
                 f"{over or ''} -> {'met' if not over else 'NOT met'}")
    high = [m for m in slack if m["tail"]["click_to_door_p99"] > P99_TARGET]
    lines.append(f"- p99 click-to-door <= {P99_TARGET:g} min: "
                 + ("met" if not high else "NOT met on " + ", ".join(
                     f"{m['instance']} {m['tail']['click_to_door_p99']:.1f} ({m['tail']['floor_over_p99_target']} "
                     f"of {m['orders']} orders have a floor over {P99_TARGET:g})" for m in high)))
    worse = {m["instance"]: m["click_to_door"]["mean"] - SLACK_MEANS_BEFORE_ISSUE_14[m["instance"]]
             for m in slack if m["instance"] in SLACK_MEANS_BEFORE_ISSUE_14}
    if worse:
        name = max(worse, key=worse.get)
        lines.append(f"- mean click-to-door not worse than before by more than {MEAN_TOLERANCE} min: worst "
                     f"{worse[name]:+.2f} ({name}) -> {'met' if worse[name] <= MEAN_TOLERANCE + 1e-9 else 'NOT met'}")
    return lines


def plot_eta_errors(slack: list[dict], path: Path) -> None:
    """p90 absolute error and bias of the drop-off estimate per instance and moment (``slack``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.plots import save

    fig, (ax_p90, ax_bias) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    names = [m["instance"].replace("o100t100", "").replace("p100", "") for m in slack]
    y = np.arange(len(slack))
    for offset, moment in zip((-0.25, 0.0, 0.25), ETA_MOMENTS):
        ax_p90.barh(y + offset, [m["eta"][moment]["p90_abs"] for m in slack], height=0.25, label=moment)
        ax_bias.barh(y + offset, [m["eta"][moment]["bias"] for m in slack], height=0.25, label=moment)
    for target, style in ((ETA_TARGETS["placement"], "--"), (ETA_TARGETS["pickup"], ":")):
        ax_p90.axvline(target, color="grey", linestyle=style, linewidth=1)
    for edge in (-BIAS_TARGET, BIAS_TARGET):
        ax_bias.axvline(edge, color="grey", linestyle="--", linewidth=1)
    ax_p90.set_yticks(y, names)
    ax_p90.set_xlabel("p90 absolute error of the drop-off estimate (min)")
    ax_bias.set_xlabel("bias: estimate minus actual drop-off (min)")
    ax_p90.legend(title="estimate at")
    fig.suptitle("MDRP o100t100*p100 days 0-5, slack: delivery-time promise vs actual (placement calibrated on other days)")
    save(fig, path)


def plot_click_to_door(solutions: dict[str, list[np.ndarray]], path: Path) -> None:
    """Histogram of click-to-door minutes per policy, pooled over instances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    bins = np.arange(0, 181, 2)
    for policy, chunks in solutions.items():
        values = np.concatenate(chunks)
        ax.hist(np.clip(values, 0, 180), bins=bins, histtype="step", linewidth=1.5,
                label=f"{policy} (mean {values.mean():.1f}, n={len(values)})")
    ax.axvline(40, color="grey", linestyle="--", linewidth=1, label="40-min target")
    ax.set_xlabel("click-to-door (minutes, clipped at 180)")
    ax.set_ylabel("orders")
    ax.set_title("MDRP o100t100*p100 days 0-5: click-to-door per policy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = parser_for("python -m bench.mdrp_quality", __doc__)
    parser.add_argument("--instances", type=Path, default=DEFAULT_INSTANCES)
    parser.add_argument("--out", type=Path, default=Path("results/quality"))
    parser.add_argument("--policy", action="append", choices=POLICIES)
    parser.add_argument("--epoch", type=float, default=1.0)
    parser.add_argument("--live-calibration", type=lambda v: None if v == "none" else Path(v), default=LIVE_CALIBRATION_PATH,
                        help="where to write the calibration fitted on every day, which live servers promise with "
                             "(default: the one in dispatch/; 'none' to leave it)")
    args = parser.parse_args(argv)
    folders = [f for f in find_instances([args.instances])
               if INSTANCE_PATTERN in f.name and f.name.endswith("p100") and f.name.startswith(tuple("012345"))]
    rows, delays, solutions = [], {}, []
    for folder in folders:
        for policy in args.policy or list(POLICIES):
            metrics, solution = run_replay(folder, policy, args.out, args.epoch, progress=False)
            rows.append(metrics)
            solutions.append(solution)
            delivered = ~np.isnan(solution.dropoff_time)
            delays.setdefault(policy, []).append((solution.dropoff_time - solution.instance.order_placed)[delivered])
            print(" | ".join(f"{k}={v}" for k, v in zip(("instance", "policy", "delivered", "deliv%", "ctd"),
                                                           (metrics["instance"], policy, metrics["orders_delivered"],
                                                            f"{100 * metrics['delivered_share_of_deliverable']:.2f}",
                                                            f"{metrics['click_to_door']['mean']:.2f}"))),
                  flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    slack = [(m, solutions[i]) for i, m in enumerate(rows) if m["policy"] == "slack"]
    calibrations = held_out_calibrations([solution for _, solution in slack])
    for m, solution in slack:
        m["eta"] = eta_metrics(solution, calibration_for(m["instance"], calibrations))
    (args.out / "eta_calibration.json").write_text(
        json.dumps({day: c.to_json() for day, c in calibrations.items()}, indent=2) + "\n")
    if "all" in calibrations and args.live_calibration is not None:  # what a live server promises with
        args.live_calibration.write_text(json.dumps(calibrations["all"].to_json(), indent=1) + "\n")
    report = "\n".join([markdown_table(rows), "", *target_checks(rows), "",
                        "Drop-off estimates of `slack` against actual drop-off (minutes; placement calibrated on "
                        "the other days):", "", eta_table([m for m, _ in slack])])
    (args.out / "quality.md").write_text(report + "\n")
    (args.out / "quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_click_to_door(delays, args.out / "click_to_door.png")
    if slack:
        plot_eta_errors([m for m, _ in slack], args.out / "eta_error.png")
    print(report)
    return 0 if all(m["feasible"] for m in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
