"""Settings read once from the environment; everything else receives them explicitly."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

SECRET_FILE = "jwt_secret"


@dataclass(frozen=True)
class Settings:
    """Every knob of a hexdispatch server process, with its documented default."""

    #: Postgres DSN; ``None`` means "start the embedded Postgres under ``home``".
    database_url: str | None = None
    #: Redis URL; ``None`` means one process, no shared cache or broker.
    redis_url: str | None = None
    #: Ray cluster address; ``None`` means start (or reuse) a local Ray.
    ray_address: str | None = None
    #: Start or join Ray at all (the catalog API alone does not need it).
    use_ray: bool = True
    #: Working directory for local state: embedded Postgres data, the JWT secret.
    home: Path = field(default_factory=lambda: Path(".hexdispatch"))
    #: HS256 secret for bearer tokens; ``None`` means read or create ``home/jwt_secret``.
    jwt_secret: str | None = None
    #: Lifetime of tokens minted by ``hexdispatch token``.
    token_ttl_s: int = 7 * 24 * 3600
    #: Apply pending migrations when the app starts.
    migrate_on_start: bool = True
    #: asyncpg pool bounds per process.
    db_pool_min: int = 2
    db_pool_max: int = 16
    #: Largest HTTP request body accepted, bytes.
    max_body_bytes: int = 64 * 1024
    #: Flat delivery fee for restaurants that do not set their own, cents.
    default_delivery_fee_cents: int = 299
    #: Delivery radius for restaurants that do not set their own, metres.
    default_delivery_radius_m: int = 5000
    #: Knobs of live dispatch (front door batching, cell ticks, matcher): see server/gateway.py.
    gateway: "GatewayParams" = field(default_factory=lambda: _default_gateway_params())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Settings from ``DATABASE_URL``, ``REDIS_URL``, ``RAY_ADDRESS``, ``HEXDISPATCH_*``."""
        env = os.environ if environ is None else environ
        values: dict = {
            "database_url": env.get("DATABASE_URL") or None,
            "redis_url": env.get("REDIS_URL") or None,
            "ray_address": env.get("RAY_ADDRESS") or None,
            "home": Path(env.get("HEXDISPATCH_HOME", ".hexdispatch")),
            "jwt_secret": env.get("HEXDISPATCH_JWT_SECRET") or None,
        }
        if env.get("HEXDISPATCH_CELL_RES"):
            from server.gateway import GatewayParams

            values["gateway"] = GatewayParams(cell_res=int(env["HEXDISPATCH_CELL_RES"]))
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    def resolved_jwt_secret(self) -> str:
        """The configured secret, else the one kept in ``home`` (created on first use)."""
        if self.jwt_secret:
            return self.jwt_secret
        return load_or_create_secret(self.home / SECRET_FILE)


def _default_gateway_params():
    from server.gateway import GatewayParams

    return GatewayParams()


def load_or_create_secret(path: Path) -> str:
    """Read the secret at ``path``; create it (owner-only permissions) if it does not exist."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(candidate + "\n")
    return candidate
