"""What machine a benchmark ran on, including a CPU speed yardstick.

Cloud machines with the same core count differ by 2-3x in single-core
speed, and our latency targets are absolute, so every report states the
CPU model and :func:`calibration_ms`: the time one core takes for a fixed
pure-Python workload (lower is faster). Two runs are comparable only when
their calibrations are close.
"""

from __future__ import annotations

import os
import platform
import time

#: Iterations of the calibration workload (about 50-150 ms on current server CPUs).
CALIBRATION_ROUNDS = 300_000


def cpu_model() -> str:
    """The CPU's model name, family and model number as the kernel reports them ('' when unknown)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _workload(rounds: int) -> int:
    # Dict, string and integer work: what a request handler mostly does.
    total, table = 0, {}
    for i in range(rounds):
        key = str(i % 1024)
        table[key] = table.get(key, 0) + i
        total ^= hash(key) + (i * 7 >> 3)
    return total + len(table)


def calibration_ms(repeats: int = 3) -> float:
    """Best-of-``repeats`` milliseconds for :data:`CALIBRATION_ROUNDS` rounds of the fixed workload."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        _workload(CALIBRATION_ROUNDS)
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def machine_facts() -> dict:
    """CPUs, CPU model, calibration, memory, Python version and load average, for a report's JSON."""
    import psutil

    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "calibration_ms": calibration_ms(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "loadavg_at_start": os.getloadavg()}


def describe(facts: dict) -> str:
    """One line for a markdown report: '2 CPUs (model), calibration 80 ms, 23.5 GiB, Python 3.11.7'."""
    text = f"{facts['cpus']} CPUs"
    if facts.get("cpu_model"):
        text += f" ({facts['cpu_model']})"
    if facts.get("calibration_ms") is not None:
        text += f", CPU calibration {facts['calibration_ms']} ms (`bench.machine`, lower is faster)"
    if facts.get("memory_gib") is not None:
        text += f", {facts['memory_gib']} GiB"
    if facts.get("python"):
        text += f", Python {facts['python']}"
    return text
