"""Who is calling: the four roles that may call the API, and a caller's identity.

Persistence decides what a caller may see and how it is written into the audit trail
from these; ``server.auth`` proves them from a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(str, Enum):
    CUSTOMER = "customer"
    DRIVER = "driver"
    RESTAURANT = "restaurant"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject and role."""

    sub: str
    role: Role

    @property
    def actor(self) -> str:
        """How this caller is written into the audit trail."""
        return f"{self.role.value}:{self.sub}"
