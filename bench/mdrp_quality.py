"""Quality benchmark: every ``o100t100*p100`` MDRP instance under every policy.

Writes ``OUT/quality.md`` (per-instance table, s2 averages, target checks),
``OUT/quality.json`` and ``OUT/click_to_door.png`` (click-to-door distribution
per policy), plus each replay's solution files under ``OUT/<instance>/<policy>/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.replay import find_instances, markdown_table, run_replay
from dispatch.matcher import POLICIES

DEFAULT_INSTANCES = Path(__file__).resolve().parents[1].parent / "shared" / "mdrp" / "instances"
INSTANCE_PATTERN = "o100t100"
S2_TARGET_MEAN = 34.0
DELIVERED_TARGET = 0.995
NEAREST_TOLERANCE = 0.5


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
    return lines


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
    parser = argparse.ArgumentParser(prog="python -m bench.mdrp_quality", description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=Path, default=DEFAULT_INSTANCES)
    parser.add_argument("--out", type=Path, default=Path("results/quality"))
    parser.add_argument("--policy", action="append", choices=POLICIES)
    parser.add_argument("--epoch", type=float, default=1.0)
    args = parser.parse_args(argv)
    folders = [f for f in find_instances([args.instances])
               if INSTANCE_PATTERN in f.name and f.name.endswith("p100") and f.name.startswith(tuple("012345"))]
    rows, delays = [], {}
    for folder in folders:
        for policy in args.policy or list(POLICIES):
            metrics, solution = run_replay(folder, policy, args.out, args.epoch, progress=False)
            rows.append(metrics)
            delivered = ~np.isnan(solution.dropoff_time)
            delays.setdefault(policy, []).append((solution.dropoff_time - solution.instance.order_placed)[delivered])
            print(" | ".join(f"{k}={v}" for k, v in zip(("instance", "policy", "delivered", "deliv%", "ctd"),
                                                           (metrics["instance"], policy, metrics["orders_delivered"],
                                                            f"{100 * metrics['delivered_share_of_deliverable']:.2f}",
                                                            f"{metrics['click_to_door']['mean']:.2f}"))),
                  flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = "\n".join([markdown_table(rows), "", *target_checks(rows)])
    (args.out / "quality.md").write_text(report + "\n")
    (args.out / "quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot_click_to_door(delays, args.out / "click_to_door.png")
    print(report)
    return 0 if all(m["feasible"] for m in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
