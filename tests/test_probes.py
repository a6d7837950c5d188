"""The bench's CPU measurement over a window: cumulative CPU times at both ends, whatever the machine's load."""

import os
import subprocess
import sys
import time

from bench import probes
from tests.waiting import eventually_sync


def burn(cpu_s: float) -> None:
    """Spend ``cpu_s`` seconds of this process's CPU (however long the scheduler makes that take)."""
    until = time.process_time() + cpu_s
    while time.process_time() < until:
        pass


def test_cpu_clock_counts_the_cpu_spent_in_the_window_by_group():
    clock = probes.CpuClock(probes.ProcessProbe({os.getpid(): "tests"}))
    burn(0.3)
    cores = clock.cores()
    elapsed = time.monotonic() - clock.started
    # 0.3 s of CPU over the window, however many seconds a loaded machine stretched it to.
    assert cores["tests"] * elapsed >= 0.3 * 0.9
    assert cores["tests"] <= os.cpu_count() * 1.1


def test_cpu_clock_counts_a_process_born_in_the_window_whole():
    clock = probes.CpuClock(probes.ProcessProbe({os.getpid(): "tests"}))
    script = "import sys, time\nuntil = time.process_time() + 0.3\nwhile time.process_time() < until: pass\n" \
             "print('done', flush=True)\nsys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        eventually_sync(lambda: child.stdout.readline().strip() == "done", what="the child's CPU spent")
        cores = clock.cores()
        elapsed = time.monotonic() - clock.started
        assert cores["tests"] * elapsed >= 0.3 * 0.9  # the child's 0.3 s, in its parent's group
    finally:
        child.communicate("")
