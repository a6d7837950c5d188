"""The environment of the processes a test starts: built explicitly, never inherited by accident.

An engineer's shell or a CI job may export ``DATABASE_URL``, ``REDIS_URL``,
``RAY_ADDRESS`` or any ``HEXDISPATCH_*`` / ``RAY_*`` setting. A server or tool
a test starts must see only what that test gives it, so its outcome does not
depend on who runs the suite.
"""

from __future__ import annotations

import os

#: Variables that configure hexdispatch (or a Ray it would join) when set.
CONFIGURING = frozenset({"DATABASE_URL", "REDIS_URL"})
CONFIGURING_PREFIXES = ("HEXDISPATCH_", "RAY_")


def configures(name: str) -> bool:
    """Whether the environment variable ``name`` changes what hexdispatch or Ray does."""
    return name in CONFIGURING or name.startswith(CONFIGURING_PREFIXES)


def child_environment(**variables: str) -> dict[str, str]:
    """This process's environment without any configuring variable, plus ``variables``."""
    return {**{k: v for k, v in os.environ.items() if not configures(k)}, **variables}
