"""Targets, markdown table and PNG plots of ``hexdispatch bench peak`` (figures from :mod:`bench.peak`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.machine import describe
from bench.peak import (
    SEEDS_PLACEMENT_TO_OFFER_P99_MS, TARGET_GPS_PER_S, TARGET_GPS_TO_CUSTOMER_P99_MS,
    TARGET_PLACEMENT_TO_OFFER_P99_MS, TARGET_SHARE_OF_CEILING, TARGET_TIMES_REDIS,
)

#: The default peak the absolute GPS target is stated for.
DEFAULT_SCALE = {"drivers": 10_000, "gps_interval_s": 5.0}


def _p99(figure: dict | None) -> float | None:
    return figure.get("p99") if figure and figure.get("n", 1) else None


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} ms"


def targets(figures: dict, args) -> list[dict]:
    """Every target of issue 6 with its measured figure; ``met`` is None when its phase did not run."""
    rows: list[dict] = []

    def add(what: str, figure: str, target: str, met: bool | None) -> None:
        rows.append({"what": what, "figure": figure, "target": target, "met": met})

    peak = figures.get("peak")
    if peak:
        offered, absorbed = peak["gps_offered_per_s"] or 0.0, peak["gps_absorbed_per_s"] or 0.0
        default_scale = peak["drivers"] >= DEFAULT_SCALE["drivers"] and \
            peak["gps_interval_s"] <= DEFAULT_SCALE["gps_interval_s"]
        keeps_up = absorbed >= 0.95 * offered > 0
        add("GPS updates absorbed", f"{absorbed:,.0f}/s of {offered:,.0f}/s offered by "
                                    f"{peak['driver_sockets']:,} driver sockets",
            f">= {TARGET_GPS_PER_S:,}/s from 10,000 sockets (>= 95% of offered)"
            + ("" if default_scale else "; scaled run: >= 95% of offered"),
            keeps_up and (absorbed >= 0.95 * TARGET_GPS_PER_S if default_scale else True))
        p99 = _p99(peak["gps_to_customer_ms"])
        add("GPS-to-customer p99", _ms(p99), f"< {TARGET_GPS_TO_CUSTOMER_P99_MS:.0f} ms",
            None if p99 is None else p99 < TARGET_GPS_TO_CUSTOMER_P99_MS)
        p99 = _p99(peak["placement_to_offer_ms"])
        add("placement-to-offer p99 (driver free, no deliberate wait)", _ms(p99),
            f"< {TARGET_PLACEMENT_TO_OFFER_P99_MS:.0f} ms (seeds: < {SEEDS_PLACEMENT_TO_OFFER_P99_MS:.0f} ms)",
            None if p99 is None else p99 < TARGET_PLACEMENT_TO_OFFER_P99_MS)
        for key, label in (("lost_orders", "lost orders"), ("lost_status_events", "lost status events"),
                           ("double_assignments", "double assignments")):
            add(label, f"{peak[key]:,}", "0", peak[key] == 0)
    for phase, error in figures.get("errors", {}).items():
        add(f"{phase} phase completed", error.strip().splitlines()[-1][:120], "no error", False)
    comparison = figures.get("comparison")
    if comparison:
        ratios = comparison["ratios"]
        share = ratios["hexdispatch_over_ceiling"]
        times = ratios["hexdispatch_over_redis_design"]
        add("hexdispatch / bare ceiling (GPS frames per CPU-second)", "n/a" if share is None else f"{share:.2f}",
            f">= {TARGET_SHARE_OF_CEILING:.2f}", None if share is None else share >= TARGET_SHARE_OF_CEILING)
        add("hexdispatch / Redis design (GPS frames per CPU-second)", "n/a" if times is None else f"{times:.2f}x",
            f">= {TARGET_TIMES_REDIS:.1f}x", None if times is None else times >= TARGET_TIMES_REDIS)
    return rows


def _pct(figure: dict | None, unit: str = "ms") -> str:
    if not figure or not figure.get("n", 1):
        return "none"
    n = f" (n={figure['n']:,})" if "n" in figure else ""
    return f"p50 {figure['p50']:,.1f}, p95 {figure['p95']:,.1f}, p99 {figure['p99']:,.1f} {unit}{n}"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}/s"


def markdown(figures: dict) -> str:
    """The report: targets, then each phase's details."""
    env, config = figures["environment"], figures["config"]
    lines = [
        "## Peak hour: `hexdispatch bench peak`",
        "",
        f"Machine: {describe(env)}; "
        f"front door(s): {', '.join(env['front_doors'])}"
        f"{' (started by the bench)' if env['server_started_by_bench'] else ''}; "
        f"{env['load_processes']} load-generator processes on the same machine; load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])}.",
        "",
        "| measure | figure | target | met |",
        "|---|---|---|---|",
    ]
    for row in figures["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        lines.append(f"| {row['what']} | {row['figure']} | {row['target']} | {met} |")
    if "peak" in figures:
        lines += ["", *peak_lines(figures["peak"], config)]
    if "stress" in figures:
        lines += ["", *stress_lines(figures["stress"])]
    if "comparison" in figures:
        lines += ["", *comparison_lines(figures["comparison"])]
    return "\n".join(lines) + "\n"


def peak_lines(peak: dict, config: dict) -> list[str]:
    deliberate, no_driver = peak["deliberate_waits"], peak["no_driver_waits"]
    pg = peak["postgres"]
    lines = [
        f"### Peak: {peak['drivers']:,} drivers, GPS every {peak['gps_interval_s']:g} s, "
        f"{peak['orders_per_minute']:g} orders/min, {config['duration']:g} s "
        f"(figures over {peak['window_s']:.0f} s after a {config['warmup']:g} s warm-up)",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| GPS offered / absorbed by the front door(s) / applied by cells | {_rate(peak['gps_offered_per_s'])} / "
        f"{_rate(peak['gps_absorbed_per_s'])} / {_rate(peak['gps_applied_by_cells_per_s'])} |",
        f"| GPS-to-actor (front door to cell; cells' own p50/p95/p99, median over readings) | "
        f"{_pct(peak['gps_to_actor_ms'])}; worst reading p99 "
        f"{_ms((peak['gps_to_actor_ms'] or {}).get('worst_p99'))} |",
        f"| GPS-to-customer (driver's fix to the customer's socket) | {_pct(peak['gps_to_customer_ms'])} |",
        f"| of which the driver's fix to the front door (driver's process, network, front door reading) | "
        f"{_pct(peak.get('gps_to_front_door_ms'))} |",
        f"| order placement (`POST /v1/orders`) | {_pct(peak['order_placement_ms'])} |",
        f"| placement to first offer, driver free, no deliberate wait | {_pct(peak['placement_to_offer_ms'])} |",
        f"| of which placement to the cell's decision (transaction, hand-over to the cell, tick) | "
        f"{_pct(peak.get('placement_to_decision_ms'))} |",
        f"| orders kept back on purpose (held for a driver about to be free, or food not ready within the "
        f"2-min commit window) | {deliberate['count']:,}: placement to offer "
        f"{_pct(deliberate['placement_to_offer_s'], 's')}; of which held {_pct(deliberate['held_s'], 's')}, "
        f"deferred {_pct(deliberate['deferred_s'], 's')} |",
        f"| orders no driver of the cell could take at first | {no_driver['count']:,}: placement to offer "
        f"{_pct(no_driver['placement_to_offer_s'], 's')}; unmatched for {_pct(no_driver['unmatched_s'], 's')} |",
        f"| matching tick ({peak['cells_active']} active cells) | "
        + (f"p50 {peak['tick_ms']['p50']:.2f} ms, p99 {peak['tick_ms']['p99']:.2f} ms, worst p99 "
           f"{peak['tick_ms']['worst_p99']:.2f} ms |" if peak["tick_ms"] else "n/a |"),
        "| Postgres writes | " + (f"{pg['commits_per_s']:,.0f} commits/s, {pg['rows_written_per_s']:,.0f} rows "
                                  f"written/s ({pg['rows_inserted_per_s']:,.0f} inserted, "
                                  f"{pg['rows_updated_per_s']:,.0f} updated) |" if pg else "n/a (no database URL) |"),
        f"| orders placed / offered / delivered / cancelled / in flight | {peak['orders_placed']:,} / "
        f"{peak['offered_orders']:,} / {peak['delivered']:,} / {peak['cancelled']:,} / {peak['in_flight']:,} |",
        f"| lost orders / lost status events / double assignments | {peak['lost_orders']} / "
        f"{peak['lost_status_events']} / {peak['double_assignments']} |",
        f"| offers declined (re-offered) / refused placements / driver errors | {peak['declined_offers']:,} / "
        f"{peak['orders_refused']:,} / {peak['driver_errors'] or 'none'} |",
        "",
        *process_lines(peak["processes"]),
    ]
    return lines


def process_lines(processes: dict) -> list[str]:
    if not processes:
        return []
    lines = ["| process group | processes | CPU mean (% of a core) | CPU max | memory (RSS MB) |",
             "|---|---:|---:|---:|---:|"]
    for group, p in processes.items():
        lines.append(f"| {group} | {p['processes']} | {p['cpu_percent_mean']:.0f} | {p['cpu_percent_max']:.0f} | "
                     f"{p['rss_mb_max']:,.0f} |")
    return lines


def stress_lines(stress: dict) -> list[str]:
    knee = stress["knee"]
    lines = [f"### Stress: GPS rate stepped up every {stress['step_seconds']:g} s after a {stress['warmup_s']:g} s "
             "warm-up; orders at the peak rate"
             + (" (stopped after the first step that did not keep up)" if stress["stopped_early"] else ""), "",
             "Knee (last step within every target): " + (
                 f"step {knee['step']}, GPS every {knee['gps_interval_s']:.2f} s, "
                 f"{_rate(knee['gps_offered_per_s'])} offered, {_rate(knee['gps_absorbed_per_s'])} absorbed."
                 if knee else "none: the first step already missed a target."), "",
             "| step | GPS interval s | offered | absorbed | GPS-to-actor p99 | GPS-to-customer p99 | "
             "placement-to-offer p99 | keeps up | within targets |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for s in stress["steps"]:
        lines.append(f"| {s['step']} | {s['gps_interval_s']:.2f} | {_rate(s['gps_offered_per_s'])} | "
                     f"{_rate(s['gps_absorbed_per_s'])} | {_ms(s['gps_to_actor_p99_ms'])} | "
                     f"{_ms(_p99(s['gps_to_customer_ms']))} | {_ms(_p99(s['placement_to_offer_ms']))} | "
                     f"{'yes' if s['keeps_up'] else 'no'} | {'yes' if s['within_targets'] else 'no'} |")
    return lines


def comparison_lines(comparison: dict) -> list[str]:
    labels = {"ceiling": "(a) bare ceiling: receive and decode only",
              "redis_design": "(b) seeds' design: GEOADD (+ PUBLISH when followed) per fix",
              "hexdispatch": "(c) hexdispatch"}
    present = [key for key in labels if key in comparison]
    ceiling = comparison["ceiling"]["frames_per_core_s"] if "ceiling" in comparison else None
    lines = ["### Side by side: GPS frames one front-door process takes per CPU-second (same load generator)", "",
             "| design | sockets | frames/s sent | frames/s absorbed | its CPU (cores) | frames per CPU-second | "
             "share of the bare ceiling | CPU of its helpers (µs/frame) | cells' GPS lag p99 | GPS-to-customer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for key in present:
        r = comparison[key]
        share = r["frames_per_core_s"] / ceiling if r["frames_per_core_s"] and ceiling else None
        cores = "n/a" if r["process_cores"] is None else f"{r['process_cores']:.2f}"
        helpers = "n/a" if r["helper_cpu_us_per_frame"] is None or not r["helper_cores"] \
            else f"{r['helper_cpu_us_per_frame']:.1f}"
        lines.append(f"| {labels[key]} | {r['sockets']:,} | {_rate(r['gps_sent_per_s'])} | "
                     f"{_rate(r['frames_per_s'])} | {cores} | {_rate(r['frames_per_core_s'])} | "
                     f"{'n/a' if share is None else f'{share:.2f}'} | {helpers} | "
                     f"{_ms(r['gps_to_actor_p99_ms'])} | {_pct(r['gps_to_customer_ms'])} |")
    ratios = comparison["ratios"]
    pace = (f"the sockets send {comparison['rate']:,.0f} fixes a second in all, each on its own clock"
            if comparison.get("rate") else "every socket sends fixes as fast as the server reads them")
    lines += ["", "Ratios (frames per CPU-second): hexdispatch / ceiling " + _ratio(ratios["hexdispatch_over_ceiling"])
              + ", hexdispatch / Redis design " + _ratio(ratios["hexdispatch_over_redis_design"])
              + ", Redis design / ceiling " + _ratio(ratios["redis_design_over_ceiling"]) + ".",
              "", f"Each design gets the same flood: {pace}. The designs share the machine's cores with the load "
                  "generator, so frames absorbed per second follow the share of CPU the scheduler gives each; "
                  "frames per CPU-second of the websocket process (what one core of its own takes) do not, and the "
                  "ratios compare those. Helpers: Redis for the Redis design, the cell actors for hexdispatch. "
                  "hexdispatch's figures count only while its cells keep up (their GPS lag p99 <= "
                  f"{comparison['max_lag_ms']:,.0f} ms)."]
    if "hexdispatch" in comparison and not comparison["hexdispatch"]["keeps_up"]:
        lines += ["", "hexdispatch's cells did **not** keep up with what its front door read: its figure is 0."]
    for key in present:
        if comparison[key]["processes"]:
            lines += ["", f"CPU and memory during the {labels[key][4:].split(':')[0]} flood:", "",
                      *process_lines(comparison[key]["processes"])]
    return lines


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------- plots


def plots(figures: dict, out: Path) -> list[str]:
    """Latency distributions, throughput over time, the stress knee; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    peak = figures.get("peak")
    if peak:
        written.append(_latency_plot(plt, peak["_plot"], out / "peak_latency.png"))
        series = {"peak": peak["_plot"]["throughput"]}
        if "stress" in figures:
            series["stress"] = figures["stress"]["_plot"]["throughput"]
        written.append(_throughput_plot(plt, series, out / "peak_throughput.png"))
    if "stress" in figures and figures["stress"]["steps"]:
        written.append(_knee_plot(plt, figures["stress"], out / "stress_knee.png"))
    if "comparison" in figures:
        written.append(_comparison_plot(plt, figures["comparison"], out / "compare_throughput.png"))
    return written


def _cdf(ax, values, label: str) -> None:
    values = np.sort(np.asarray(values, dtype=float))
    if len(values):
        ax.plot(np.maximum(values, 1e-3), np.arange(1, len(values) + 1) / len(values), label=f"{label} (n={len(values):,})")


def _latency_plot(plt, data: dict, path: Path) -> str:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    _cdf(ax, data["gps_to_customer"], "GPS fix to customer")
    ax.set(title="GPS-to-customer", xlabel="ms (log)", ylabel="share of positions", xscale="log")
    ax = axes[0][1]
    _cdf(ax, data["offers"]["free_ms"], "driver free, no deliberate wait")
    _cdf(ax, data["offers"]["all_ms"], "all orders, incl. deliberate waits")
    ax.set(title="placement to first offer", xlabel="ms (log)", ylabel="share of orders", xscale="log")
    ax = axes[1][0]
    if data["cells"]:
        at = np.asarray([c[0] for c in data["cells"]])
        for column, label in ((1, "p50"), (2, "p95"), (3, "p99")):
            ax.scatter(at - at.min(), [c[column] for c in data["cells"]], s=8, label=label)
    ax.set(title="GPS-to-actor (each active cell's recent percentiles)", xlabel="s", ylabel="ms")
    ax = axes[1][1]
    _cdf(ax, data["placement"], "POST /v1/orders")
    ax.set(title="order placement", xlabel="ms (log)", ylabel="share of orders", xscale="log")
    return _save(plt, fig, axes.flat, path)


def _throughput_plot(plt, series: dict, path: Path) -> str:
    fig, axes = plt.subplots(len(series), 1, figsize=(11, 3.8 * len(series)), squeeze=False)
    for ax, (name, data) in zip(axes[:, 0], series.items()):
        if data["offered"]:
            ax.plot(*zip(*data["offered"]), label="offered by the load generators")
        if data["absorbed"]:
            ax.plot(*zip(*data["absorbed"]), label="absorbed by the front door(s)")
        ax.set(title=f"GPS fixes per second: {name}", xlabel="s since the load started", ylabel="fixes/s")
    return _save(plt, fig, axes[:, 0], path)


def _knee_plot(plt, stress: dict, path: Path) -> str:
    steps = stress["steps"]
    offered = [s["gps_offered_per_s"] or 0.0 for s in steps]
    fig, ax = plt.subplots(figsize=(10, 5))
    for key, label in (("gps_to_customer_ms", "GPS-to-customer p99"),
                       ("placement_to_offer_ms", "placement-to-offer p99")):
        ax.plot(offered, [_p99(s[key]) or np.nan for s in steps], marker="o", label=label)
    ax.plot(offered, [s["gps_to_actor_p99_ms"] or np.nan for s in steps], marker="o", label="GPS-to-actor p99")
    ax.axhline(TARGET_GPS_TO_CUSTOMER_P99_MS, color="grey", linestyle="--", label="100 ms target")
    if stress["knee"]:
        ax.axvline(stress["knee"]["gps_offered_per_s"], color="green", linestyle=":", label="knee")
    ax.set(title="stress: latency as the GPS rate rises", xlabel="GPS fixes/s offered", ylabel="ms (log)",
           yscale="log")
    ax2 = ax.twinx()
    ax2.plot(offered, [s["gps_absorbed_per_s"] or np.nan for s in steps], color="black", marker="x",
             label="absorbed /s")
    ax2.set_ylabel("fixes/s absorbed")
    handles = ax.get_legend_handles_labels()
    extra = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="upper left")
    return _save(plt, fig, [], path, [ax])


def _comparison_plot(plt, comparison: dict, path: Path) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    names = {"ceiling": "bare ceiling", "redis_design": "Redis design", "hexdispatch": "hexdispatch"}
    names = {key: label for key, label in names.items() if key in comparison}
    for key, label in names.items():
        absorbed = comparison[key]["_plot"]["absorbed"]
        if absorbed:
            left.plot(*zip(*absorbed), label=label)
    left.set(title="GPS frames absorbed per second during each flood", xlabel="s since the flood started",
             ylabel="frames/s")
    values = [comparison[k].get("frames_per_core_s") or 0.0 for k in names]
    right.bar(list(names.values()), values, color=["grey", "tab:red", "tab:blue"])
    for i, v in enumerate(values):
        right.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    right.set(title="per CPU-second of the websocket process", ylabel="frames per CPU-second")
    return _save(plt, fig, [left], path)


def _save(plt, fig, legend_axes, path: Path, grid_axes=None) -> str:
    """Grid and legends on the axes, then write the figure; returns its file name."""
    for ax in grid_axes if grid_axes is not None else legend_axes:
        ax.grid(alpha=0.3)
    for ax in legend_axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
