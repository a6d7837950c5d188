"""What ``serve`` needs of the local Ray it starts: listening on the server's host only, and leaving nothing behind.

* **Binding.** Ray's servers (GCS, raylet, workers, agents) listen on every
  interface unless Ray runs in its single-machine mode (what it uses on macOS
  and Windows), where its node address is loopback and all of them listen on
  127.0.0.1. :func:`bind_local_ray_to` switches that mode on for a loopback
  host; it must run before Ray is imported (Ray reads it once), and is
  inherited by every process the server starts.
* **Stopping.** ``ray.shutdown()`` may leave a straggler (an orphaned
  ``ray::RuntimeEnvAgent`` once survived a stop). :func:`stop_local_ray` shuts
  Ray down, then ends every process of *this* Ray session still alive: those
  it started (descendants of this process) and any that name the session's
  directory in their command line or open files (every Ray process logs
  there). Ray processes of other servers or test sessions on the machine have
  their own session directories and are never touched.
"""

from __future__ import annotations

import ipaddress
import logging
import os

import psutil

log = logging.getLogger("hexdispatch.ray")

#: Ray's switch for its single-machine mode (read once, when Ray is imported).
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Ray's setting for its workers' priority. Ray lowers them to nice 15 by default, for clusters whose machines run
#: nothing else; our workers are the cell actors, which share the machine with the front door (or, in the tests,
#: with the test process and whatever else runs): at nice 15 they starve behind it, and dispatch with them.
WORKER_NICENESS_ENV = "RAY_worker_niceness"
#: Ray's workers run at the priority of the process that starts them (see :data:`WORKER_NICENESS_ENV`).
WORKER_NICENESS = {WORKER_NICENESS_ENV: "0"}
#: Names Ray gives its processes (``ray::<actor or role>`` for workers and agents).
RAY_PROCESS_NAMES = ("raylet", "gcs_server", "ray::", "ray-dashboard")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_local_ray_to(host: str) -> bool:
    """Make a local Ray started by this process listen on loopback only when ``host`` is loopback; True if so.

    Other hosts leave Ray's default (every interface): this Ray version cannot bind its servers to
    one external address.
    """
    if not is_loopback(host):
        return False
    os.environ.setdefault(SINGLE_MACHINE_ENV, "0")
    return True


def session_dir() -> str:
    """The session directory of the Ray this process is connected to."""
    import ray

    return ray._private.worker._global_node.get_session_dir_path()


def _is_ray(process: psutil.Process) -> bool:
    try:
        # Ray's Python processes that keep their command line run scripts from Ray's package.
        return process.name().startswith(RAY_PROCESS_NAMES) or any("/ray/" in part for part in process.cmdline()[:3])
    except psutil.Error:
        return False


def _of_session(process: psutil.Process, directory: str) -> bool:
    try:
        return (any(directory in part for part in process.cmdline())
                or any(f.path.startswith(directory) for f in process.open_files()))
    except psutil.Error:
        return False


def session_processes(directory: str) -> list[psutil.Process]:
    """Processes of this user that belong to the Ray session in ``directory``."""
    me, user = os.getpid(), os.getuid()
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != me and process.uids().real == user and _is_ray(process) and _of_session(process, directory):
                found.append(process)
        except psutil.Error:
            continue
    return found


def stop_local_ray(directory: str, timeout_s: float = 10.0) -> list[str]:
    """``ray.shutdown()``, then end every process of the session in ``directory`` still alive (SIGTERM,
    then SIGKILL after ``timeout_s``); return the names of those that had to be ended."""
    import ray

    started = [p for p in psutil.Process().children(recursive=True) if _is_ray(p)]
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=timeout_s)
    stragglers = {p.pid: p for p in alive}
    stragglers.update((p.pid, p) for p in session_processes(directory))
    names = []
    for process in stragglers.values():
        try:
            names.append(process.name())
            process.terminate()
        except psutil.Error:
            continue
    _, still = psutil.wait_procs(list(stragglers.values()), timeout=timeout_s)
    for process in still:
        try:
            process.kill()
        except psutil.Error:
            continue
    if names:
        log.warning("ended Ray processes that outlived ray.shutdown(): %s", ", ".join(sorted(names)))
    return names


def workers_at_normal_priority() -> None:
    """Have the Ray this process starts run its workers at normal priority (:data:`WORKER_NICENESS`), unless
    ``RAY_worker_niceness`` is already set. Must run before Ray starts."""
    for key, value in WORKER_NICENESS.items():
        os.environ.setdefault(key, value)
