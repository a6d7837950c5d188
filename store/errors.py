"""What the system of record refuses, in domain terms.

Persistence (``store``) raises these; only the HTTP edge turns them
into statuses and JSON bodies (``server.errors``), so code below the API (the
cell actors) never depends on the HTTP layer. Every refusal changed nothing.
"""

from __future__ import annotations


class StoreError(Exception):
    """A refusal with a stable ``code`` and a human ``message``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class NotFound(StoreError):
    """The thing named does not exist (or the caller may not see it)."""

    def __init__(self, what: str = "resource"):
        super().__init__("not_found", f"{what} not found")


class Conflict(StoreError):
    """The request does not fit the current state (an illegal transition, a stale version, ...)."""


class Invalid(StoreError):
    """The request refers to something that cannot be used (an unknown item, a place out of range, ...)."""
