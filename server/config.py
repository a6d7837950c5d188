"""Settings read once from the environment; everything else receives them explicitly."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from server.ratelimit import Limit, RateLimits

SECRET_FILE = "jwt_secret"


class SettingsError(ValueError):
    """A setting that cannot be used; its message names the setting and fits on one line."""


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A yes/no variable: 1/true/yes/on or 0/false/no/off (any case); unset or empty is ``default``."""
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected 1/true/yes/on or 0/false/no/off, got {env[name]!r}")


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
    #: Redis connections per process, and how long a call waits for one when all are busy (a reconnect
    #: storm's rate-limit checks queue for a connection rather than fail with "Too many connections").
    redis_pool_max: int = 32
    redis_pool_wait_s: float = 2.0
    #: Largest HTTP request body accepted, bytes.
    max_body_bytes: int = 64 * 1024
    #: Flat delivery fee for restaurants that do not set their own, cents.
    default_delivery_fee_cents: int = 299
    #: Delivery radius for restaurants that do not set their own, metres.
    default_delivery_radius_m: int = 5000
    #: Rate limits per principal (shared through Redis when ``redis_url`` is set): see server/ratelimit.py.
    rate_limits: RateLimits = field(default_factory=RateLimits)
    #: Where a thread writes this process's gateway counters every 0.2 s (for monitors of a saturated
    #: process, whose HTTP answers come late); ``None``: nowhere.
    stats_file: Path | None = None
    #: Knobs of live dispatch (front door batching, cell ticks, matcher): see server/gateway/params.py.
    gateway: "GatewayParams" = field(default_factory=lambda: _default_gateway_params())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Settings from ``DATABASE_URL``, ``REDIS_URL``, ``RAY_ADDRESS``, ``HEXDISPATCH_*``; a value that does
        not parse raises :class:`SettingsError` naming its variable."""
        env = os.environ if environ is None else environ
        try:
            return cls._from_env(env, overrides)
        except SettingsError:
            raise
        except ValueError as exc:  # every parser below names its variable
            raise SettingsError(str(exc)) from None

    @classmethod
    def _from_env(cls, env: Mapping[str, str], overrides: dict) -> "Settings":
        if env.get("DATABASE_URL"):
            check_database_url(env["DATABASE_URL"])
        if env.get("REDIS_URL"):
            check_redis_url(env["REDIS_URL"])
        values: dict = {
            "database_url": env.get("DATABASE_URL") or None,
            "redis_url": env.get("REDIS_URL") or None,
            "ray_address": env.get("RAY_ADDRESS") or None,
            "home": Path(env.get("HEXDISPATCH_HOME", ".hexdispatch")),
            "jwt_secret": env.get("HEXDISPATCH_JWT_SECRET") or None,
            "migrate_on_start": _flag(env, "HEXDISPATCH_MIGRATE_ON_START", True),
            "stats_file": Path(env["HEXDISPATCH_STATS_FILE"]) if env.get("HEXDISPATCH_STATS_FILE") else None,
        }
        if any(env.get(name) for name in GATEWAY_ENV):
            values["gateway"] = gateway_params_from_env(env)
        if env.get("HEXDISPATCH_GPS_RATE"):
            values["rate_limits"] = rate_limits_from_env(env)
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    def resolved_jwt_secret(self) -> str:
        """The configured secret, else the one kept in ``home`` (created on first use)."""
        if self.jwt_secret:
            return self.jwt_secret
        return load_or_create_secret(self.home / SECRET_FILE)

    def existing_jwt_secret(self) -> tuple[str, str]:
        """``(secret, where it came from)`` for tools that sign tokens for a running server: never creates one,
        since a new secret would not be the server's. Raises :class:`SettingsError` when there is none."""
        if self.jwt_secret:
            return self.jwt_secret, "HEXDISPATCH_JWT_SECRET"
        path = (self.home / SECRET_FILE).absolute()
        try:
            return path.read_text().strip(), str(path)
        except FileNotFoundError:
            raise SettingsError(
                f"no JWT secret at {path}: run this from the server's directory (where `hexdispatch serve` "
                "keeps .hexdispatch/), or set HEXDISPATCH_HOME or HEXDISPATCH_JWT_SECRET to the server's") from None


def _check_url(name: str, url: str, schemes: tuple[str, ...], expected: str, needs_host: bool) -> None:
    """Refuse ``url`` (the setting ``name``) unless its scheme is one of ``schemes`` and its port parses."""
    from urllib.parse import urlsplit

    shown = _without_password(url)
    parts = urlsplit(url)
    if parts.scheme not in schemes or (needs_host and not parts.netloc):
        raise SettingsError(f"{name}: expected {expected}, got {shown!r}")
    try:
        parts.port
    except ValueError:
        raise SettingsError(f"{name}: the port is not a number in {shown!r}") from None


def check_database_url(url: str) -> None:
    """Refuse a ``DATABASE_URL`` that is not a PostgreSQL URL with a host, port and database that parse."""
    _check_url("DATABASE_URL", url, ("postgres", "postgresql"), "postgresql://USER@HOST:PORT/DATABASE", True)


def check_redis_url(url: str) -> None:
    """Refuse a ``REDIS_URL`` redis-py cannot parse."""
    _check_url("REDIS_URL", url, ("redis", "rediss", "unix"), "redis://HOST:PORT/DB", False)


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return url.replace(f":{password}@", ":***@", 1) if password else url


def _default_gateway_params():
    from server.gateway import GatewayParams

    return GatewayParams()


GATEWAY_ENV = ("HEXDISPATCH_CELL_RES", "HEXDISPATCH_CELL_TICK_S", "HEXDISPATCH_CELL_PARAMS",
               "HEXDISPATCH_SERVICE_AREA", "HEXDISPATCH_MAX_CELLS", "HEXDISPATCH_MAX_SPEED_MPS")


def gateway_params_from_env(env: Mapping[str, str]):
    """``GatewayParams`` from ``HEXDISPATCH_CELL_RES`` (H3 resolution of the cells),
    ``HEXDISPATCH_CELL_TICK_S`` (seconds between matching ticks) and ``HEXDISPATCH_CELL_PARAMS``:
    a JSON object merged into the default ``CellParams``, its ``"match"`` object into
    ``MatchParams``, e.g. ``{"speed_kmh": 40, "match": {"commit_window": 1.5}}``;
    ``HEXDISPATCH_SERVICE_AREA`` (see :func:`service_area_from_env`), ``HEXDISPATCH_MAX_CELLS`` (most cell
    actors) and ``HEXDISPATCH_MAX_SPEED_MPS`` (fastest plausible driver, metres per second).
    Unknown keys and values of the wrong type raise ``ValueError``."""
    import json

    from dispatch.cell import CellParams
    from server.gateway import GatewayParams

    changes: dict = {}
    if env.get("HEXDISPATCH_CELL_RES"):
        changes["cell_res"] = _number(env, "HEXDISPATCH_CELL_RES", int, "an H3 resolution", 0, 15)
    if env.get("HEXDISPATCH_CELL_TICK_S"):
        changes["cell_tick_s"] = _number(env, "HEXDISPATCH_CELL_TICK_S", float, "seconds", 0, 60)
        if not 0 < changes["cell_tick_s"] < 60:
            raise ValueError("HEXDISPATCH_CELL_TICK_S: expected seconds between 0 and 60")
    if env.get("HEXDISPATCH_CELL_PARAMS"):
        try:
            overrides = json.loads(env["HEXDISPATCH_CELL_PARAMS"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"HEXDISPATCH_CELL_PARAMS: not JSON: {exc}") from None
        changes["cell"] = _merged(CellParams(), overrides, "HEXDISPATCH_CELL_PARAMS")
    if env.get("HEXDISPATCH_SERVICE_AREA"):
        changes["service_area"] = service_area_from_env(env["HEXDISPATCH_SERVICE_AREA"])
    if env.get("HEXDISPATCH_MAX_CELLS"):
        changes["max_cells"] = _number(env, "HEXDISPATCH_MAX_CELLS", int, "a number of cells", 1, 1_000_000)
    if env.get("HEXDISPATCH_MAX_SPEED_MPS"):
        speed = _number(env, "HEXDISPATCH_MAX_SPEED_MPS", float, "metres per second", 1, 1e9)
        changes["movement"] = replace(GatewayParams().movement, max_speed_mps=speed)
    return GatewayParams(**changes)


def _number(env: Mapping[str, str], name: str, kind: type, what: str, low: float, high: float):
    """``env[name]`` as a ``kind`` between ``low`` and ``high``; ``ValueError`` naming ``name`` otherwise."""
    try:
        value = kind(env[name])
    except ValueError:
        raise ValueError(f"{name}: expected {what}, got {env[name]!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name}: expected {what} between {low:g} and {high:g}")
    return value


def workers_from_env(env: Mapping[str, str] | None = None) -> int:
    """``HEXDISPATCH_WORKERS``: front-door processes ``serve`` starts (1 when unset)."""
    env = os.environ if env is None else env
    if not env.get("HEXDISPATCH_WORKERS"):
        return 1
    try:
        return _number(env, "HEXDISPATCH_WORKERS", int, "a number of processes", 1, 1024)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def service_area_from_env(value: str):
    """The ``dispatch.service_area.Region`` of ``HEXDISPATCH_SERVICE_AREA``: H3 cell indexes separated by commas
    or spaces, ``*`` for everywhere, or the path of a file holding such a list (``#`` comments)."""
    from dispatch.service_area import Region

    try:
        return Region.parse(value)
    except ValueError as not_cells:
        path = Path(value.strip())
        if not path.is_file():
            raise ValueError(f"HEXDISPATCH_SERVICE_AREA: neither a list of H3 cells ({not_cells}) nor a file") from None
    try:
        return Region.parse(path.read_text())
    except ValueError as exc:
        raise ValueError(f"HEXDISPATCH_SERVICE_AREA: {path}: {exc}") from None


def _merged(defaults, overrides, where: str):
    """The dataclass ``defaults`` with the JSON object ``overrides`` applied (nested dataclasses merged)."""
    import dataclasses

    if not isinstance(overrides, dict):
        raise ValueError(f"{where}: expected a JSON object")
    fields = {f.name for f in dataclasses.fields(defaults)}
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(fields))}")
        current = getattr(defaults, key)
        if dataclasses.is_dataclass(current):
            value = _merged(current, value, f"{where}.{key}")
        elif isinstance(current, float) and type(value) is int:
            value = float(value)
        elif type(value) is not type(current):
            raise ValueError(f"{where}.{key}: expected {type(current).__name__}, got {value!r}")
        changes[key] = value
    return replace(defaults, **changes)


def rate_limits_from_env(env: Mapping[str, str]) -> RateLimits:
    """``RateLimits`` with the per-socket GPS limit from ``HEXDISPATCH_GPS_RATE`` (fixes per second;
    bursts of 5 s worth, at least 10). Only capacity benchmarks need more than the default 2/s."""
    try:
        rate = float(env["HEXDISPATCH_GPS_RATE"])
    except ValueError:
        raise ValueError("HEXDISPATCH_GPS_RATE: expected fixes per second, a number") from None
    if not 0 < rate <= 10_000:
        raise ValueError("HEXDISPATCH_GPS_RATE: expected fixes per second between 0 and 10000")
    return replace(RateLimits(), gps=Limit(rate, max(10.0, 5 * rate)))


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
