"""Postgres plumbing: migrations (alembic) and the embedded server (the pool: ``store.pool``).

Migrations are plain SQL files under ``server/migrations/versions`` run by
alembic, which records what it applied in ``alembic_version``; applying them
is idempotent and safe from several processes at once (see ``env.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil

log = logging.getLogger("hexdispatch.db")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def run_sql(sql: str) -> None:
    """Run a multi-statement SQL script inside the current alembic migration.

    alembic's ``op.execute`` goes through a prepared statement, which takes one
    statement only; the raw asyncpg connection takes a whole script.
    """
    run_on_connection(lambda conn: conn.execute(sql))


def run_on_connection(work) -> None:
    """Run ``await work(conn)`` on the raw asyncpg connection of the current alembic migration."""
    from alembic import op
    from sqlalchemy.util import await_only

    await_only(work(op.get_bind().connection.driver_connection))


def sqlalchemy_url(dsn: str) -> str:
    """The asyncpg-dialect SQLAlchemy URL for a ``postgresql://`` DSN."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in {"postgres", "postgresql", "postgresql+asyncpg"}:
        raise ValueError(f"not a PostgreSQL URL: {dsn!r}")
    return f"postgresql+asyncpg://{rest}"


def migrate_sync(dsn: str, target: str = "head") -> None:
    """Apply every migration up to ``target`` (blocking; runs its own event loop)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["sqlalchemy_url"] = sqlalchemy_url(dsn)
    command.upgrade(config, target)


async def migrate(dsn: str) -> None:
    """Apply pending migrations from async code (alembic runs in a worker thread)."""
    await asyncio.to_thread(migrate_sync, dsn)


def redact(dsn: str) -> str:
    """``dsn`` with its password hidden, for logs."""
    parts = urlsplit(dsn)
    if parts.password:
        return dsn.replace(f":{parts.password}@", ":***@", 1)
    return dsn


class EmbeddedPostgres:
    """A private Postgres (pgserver) whose data lives in ``data_dir`` and survives restarts."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self._server = None

    def start(self) -> str:
        """Start (or attach to) the server and return its DSN."""
        import pgserver

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir.resolve(), cleanup_mode="stop")
        dsn = self._server.get_uri()
        log.info("embedded Postgres at %s", self.data_dir)
        return dsn

    def stop(self) -> None:
        """Stop the server unless another live process still uses it (pgserver counts its users).

        The server is found by its data directory, not by the pid remembered at start: after a restart
        from outside (``pg_ctl restart``) pgserver alone would leave the new server running.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        others = [pid for pid in server.global_process_id_list.get() if pid != os.getpid() and psutil.pid_exists(pid)]
        server.cleanup()
        if not others:
            stop_postgres(self.data_dir.resolve(), server.system_user)


def stop_postgres(data_dir: Path, system_user: str | None, timeout_s: float = 60.0) -> None:
    """Stop the Postgres running on ``data_dir``, if one is (``pg_ctl stop -m fast``, then its postmaster's
    pid from ``postmaster.pid`` is terminated if that failed)."""
    import subprocess

    from pgserver._commands import pg_ctl
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir)
    if info is None or not info.is_running():
        return
    log.info("stopping the embedded Postgres on %s (pid %s)", data_dir, info.pid)
    try:
        pg_ctl(["-w", "-t", str(int(timeout_s)), "-m", "fast", "stop"], pgdata=data_dir, user=system_user)
    except subprocess.CalledProcessError:
        log.warning("pg_ctl could not stop the Postgres on %s; terminating pid %s", data_dir, info.pid)
        process = psutil.Process(info.pid)
        process.terminate()
        try:
            process.wait(timeout_s)
        except psutil.TimeoutExpired:
            process.kill()


async def database_identity(pool) -> str:
    """A short stable id of the database this deployment uses (its cluster's system id and name).

    Front doors of one deployment share it whatever DSN spelling they use, so
    it namespaces their shared Redis keys apart from other deployments'.
    """
    import hashlib

    try:
        system = await pool.fetchval("SELECT system_identifier::text FROM pg_control_system()")
    except asyncpg.PostgresError:  # not allowed for this role: the name and address must do
        system = await pool.fetchval("SELECT coalesce(inet_server_addr()::text, '') || ':' || current_setting('port')")
    name = await pool.fetchval("SELECT current_database()")
    return hashlib.sha1(f"{system}/{name}".encode()).hexdigest()[:12]
