"""Starting a local Ray on a loaded machine.

``ray.init`` gives its raylet a fixed 30 s to register with the GCS
(``ray/_private/node.py``, not configurable); on a 2-core machine at load
average 20 that start-up alone can take longer. Only that start-up timeout is
retried, after a clean shutdown: any other failure, and any failure once Ray
runs, is the test's to report.

Its workers (the cell actors) run at normal priority, as ``serve`` runs them
(:func:`server.local_ray.workers_at_normal_priority`): at Ray's default of
nice 15 they starve beside any busy process, and every live test waits on them.
"""

from __future__ import annotations

STARTUP_TIMED_OUT = "timed out during startup"
ATTEMPTS = 4


def init_local_ray(**options):
    """``ray.init(address="local", **options)``, retrying a raylet start-up that timed out; returns ``ray``."""
    import ray

    from server.local_ray import workers_at_normal_priority

    workers_at_normal_priority()
    for _ in range(ATTEMPTS - 1):
        try:
            ray.init(address="local", **options)
            return ray
        except Exception as exc:
            ray.shutdown()
            if STARTUP_TIMED_OUT not in str(exc):
                raise
    ray.init(address="local", **options)
    return ray
