"""The world ``hexdispatch bench chaos`` owns, so that it may break it: Postgres, Redis, a Ray cluster, front doors.

Each piece is started here on free loopback ports in a temporary directory,
knows how to fail in the way the bench injects (a restart, a lost node, a
killed process), and stops for good on :meth:`stop`; :func:`chaos_world`
stops all of them whatever happens (an error, Ctrl-C). The machine's own
Postgres and Redis are never touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

from clients.http import stop_process, wait_until_healthy
from server.local_ray import WORKER_NICENESS

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path(os.environ.get("HEXDISPATCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
RAY = Path(sys.executable).with_name("ray")
#: The clusters started here use token authentication, with a token of their own (never ``~/.ray/auth_token``,
#: which may be missing on a fresh machine): every member and client gets both in its environment.
#: As ``ray_cluster.yaml`` starts its nodes: cell actors at normal priority (``server.local_ray.WORKER_NICENESS``).
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
           **WORKER_NICENESS}


def free_port() -> int:
    from bench.catalog import free_port as any_free_port

    return any_free_port()


def _suppressing_lookup(action) -> None:
    try:
        action()
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def _wait_for(check, timeout_s: float, what: str, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready within {timeout_s:g} s")
        time.sleep(every_s)


class OwnPostgres:
    """A PostgreSQL cluster of our own (``initdb`` + ``pg_ctl``) on a free port, one database in it.

    As root, the server runs as the ``postgres`` system user (Postgres refuses root).
    """

    def __init__(self, home: Path, database: str = "hexdispatch"):
        self.data = home / "pgdata"
        self.log = home / "postgres.log"
        self.port = free_port()
        self.database = database
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def _pg_ctl(self, *args: str, timeout_s: float = 120) -> None:
        subprocess.run([*self.as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                        "-t", str(int(timeout_s)), *args], check=True, stdout=subprocess.DEVNULL, timeout=timeout_s + 10)

    def start(self) -> "OwnPostgres":
        self.data.mkdir(parents=True)
        if self.as_postgres:
            shutil.chown(self.data.parent, "postgres")
            shutil.chown(self.data, "postgres")
        subprocess.run([*self.as_postgres, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "--encoding=UTF8"], check=True, stdout=subprocess.DEVNULL)
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c max_connections=400 "
                   f"-c shared_buffers=256MB")
        self._pg_ctl("-o", options, "start")
        self._options = options
        subprocess.run([*self.as_postgres, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", self.database], check=True)
        return self

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server is back when this returns."""
        self._pg_ctl("-o", self._options, "-m", "fast", "restart")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                self._pg_ctl("-m", "immediate", "stop", timeout_s=60)


class OwnRedis:
    """``redis-server`` of our own on a free port, nothing persisted (a restart empties it)."""

    def __init__(self, home: Path):
        self.port = free_port()
        self.log = home / "redis.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "OwnRedis":
        import redis

        with self.log.open("ab") as out:
            self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no"], stdout=out, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            _wait_for(answers, 30, "redis-server")
        finally:
            client.close()
        return self

    def restart(self) -> None:
        """Stop (its data gone: nothing is saved) and start again on the same port."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=15)
            self.process = None


class RayNode:
    """One ``ray start --block`` in its own process group (so it can be lost as a whole)."""

    def __init__(self, log: Path, *args: str, cpus: int = 1, cell_host: float = 1, env: dict[str, str] | None = None):
        """``env``: the node's whole environment (default: this process's, with :data:`RAY_ENV`)."""
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(RAY), "start", "--block", f"--num-cpus={cpus}", f'--resources={{"cell_host": {cell_host}}}',
                 *args],
                env=env if env is not None else {**os.environ, **RAY_ENV}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def started(self) -> bool:
        """Whether ``ray start`` reports the node up (raises if the node exited instead)."""
        if self.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
        return "Ray runtime started" in self.log.read_text(errors="replace")

    def lose(self) -> None:
        """The machine is gone: every process of the node (its workers included) dies at once."""
        root = psutil.Process(self.process.pid)
        doomed = [root, *root.children(recursive=True)]  # workers start sessions of their own
        _suppressing_lookup(lambda: os.killpg(self.process.pid, signal.SIGKILL))
        for process in doomed:
            _suppressing_lookup(process.kill)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.lose()


class RayCluster:
    """A head node and ``workers`` more nodes on this machine, all offering ``cell_host``; the head runs
    the dashboard, whose state API finds actors' processes."""

    def __init__(self, home: Path, workers: int):
        self.home = home
        self.port = free_port()
        self.dashboard_port = free_port()
        self.head = RayNode(home / "ray-head.log", "--head", f"--port={self.port}", "--include-dashboard=true",
                            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                            f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}")
        self.workers: list[RayNode] = []
        self.wanted_workers = workers
        self.joined = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> "RayCluster":
        _wait_for(lambda: self._port_open(self.port), 120, "the Ray head")
        for _ in range(self.wanted_workers):
            self.add_worker()
        return self

    def add_worker(self) -> RayNode:
        """A new worker node joins (a replacement machine)."""
        self.joined += 1
        node = RayNode(self.home / f"ray-worker-{self.joined}.log", f"--address={self.address}",
                       f"--metrics-export-port={free_port()}")
        self.workers.append(node)
        return node

    def lose_worker(self) -> RayNode:
        """The most recent worker node dies with all its processes."""
        node = self.workers.pop()
        node.lose()
        return node

    def alive_nodes(self) -> int:
        """Live nodes offering ``cell_host``, as the dashboard's state API sees them."""
        from ray.util.state import list_nodes

        nodes = list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
        return sum(1 for n in nodes if (n.resources_total or {}).get("cell_host", 0) > 0)

    def cell_actor_processes(self) -> list[dict]:
        """Every live cell actor: ``{"name", "pid", "node_id"}`` (Ray's state API)."""
        from ray.util.state import list_actors

        actors = list_actors(address=self.dashboard, filters=[("class_name", "=", "CellActor"), ("state", "=", "ALIVE")],
                             limit=10_000, raise_on_missing_output=False)
        return [{"name": a.name, "pid": a.pid, "node_id": a.node_id} for a in actors if a.pid]

    def stop(self) -> None:
        for node in reversed(self.workers):
            node.stop()
        self.head.stop()

    @staticmethod
    def _port_open(port: int) -> bool:
        import socket

        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0


def use_cluster_auth() -> None:
    """Talk to clusters started here with their authentication mode; Ray reads it once, at its first use in
    the process, so this must run before anything here touches Ray."""
    os.environ.update(RAY_ENV)


class FrontDoors:
    """``hexdispatch serve --workers N`` on a free port, joined to the cluster, on our Postgres and Redis."""

    def __init__(self, home: Path, workers: int, dsn: str, redis_url: str | None, ray_address: str, secret: str,
                 extra_env: dict[str, str]):
        self.home = home
        self.port = free_port()
        self.workers = workers
        self.log = home / "serve.log"
        self.env = {**os.environ, "DATABASE_URL": dsn, "HEXDISPATCH_JWT_SECRET": secret, "PYTHONPATH": str(REPO),
                    "HEXDISPATCH_HOME": str(home / ".hexdispatch"), "RAY_ADDRESS": ray_address, **RAY_ENV,
                    **extra_env}
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        else:
            self.env.pop("REDIS_URL", None)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 240) -> "FrontDoors":
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--workers", str(self.workers),
                 "--log-level", "warning"], cwd=self.home, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_until_healthy(self.url, self.process, timeout_s=timeout_s)
        if self.workers > 1:
            _wait_for(lambda: len(self.worker_pids()) >= self.workers, timeout_s, "the front-door workers")
        return self

    def worker_pids(self) -> list[int]:
        """The front-door worker processes (uvicorn's children of ``serve``), oldest first."""
        if self.process is None:
            return []
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        workers = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                command = " ".join(child.cmdline())
                if "spawn_main" in command and "resource_tracker" not in command:
                    workers.append((child.create_time(), child.pid))
        return [pid for _, pid in sorted(workers)]

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=60)
            self.process = None


@dataclass
class World:
    """Everything the bench started: what the faults act on."""

    home: Path
    postgres: OwnPostgres
    redis: OwnRedis | None
    ray: RayCluster
    front_doors: FrontDoors
    secret: str

    def ports(self) -> dict[str, int]:
        """Where each piece listens (all on 127.0.0.1)."""
        ports = {"postgres": self.postgres.port, "ray": self.ray.port, "ray dashboard": self.ray.dashboard_port,
                 "front doors": self.front_doors.port}
        if self.redis is not None:
            ports["redis"] = self.redis.port
        return ports


@contextlib.contextmanager
def chaos_world(workers: int, ray_workers: int, with_redis: bool, secret: str,
                server_env: dict[str, str] | None = None, logs: Path | None = None, say=print) -> Iterator[World]:
    """Start Postgres, Redis (when ``with_redis``), a Ray head with ``ray_workers`` more nodes, and ``serve
    --workers``; yield them; stop all of them on the way out, whatever the way (error, Ctrl-C), and copy
    their logs to ``logs``."""
    home = Path(tempfile.mkdtemp(prefix="hexdispatch-chaos-"))
    os.chmod(home, 0o755)  # the postgres system user reaches its data directory through it
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        if logs is not None:
            stack.callback(_copy_logs, home, logs)
        say(f"starting Postgres, {'Redis, ' if with_redis else ''}Ray ({1 + ray_workers} nodes) in {home} ...")
        postgres = OwnPostgres(home)
        stack.callback(postgres.stop)
        postgres.start()
        redis_server = None
        if with_redis:
            redis_server = OwnRedis(home)
            stack.callback(redis_server.stop)
            redis_server.start()
        ray = RayCluster(home, ray_workers)
        stack.callback(ray.stop)
        ray.start()
        _wait_for(lambda: _quietly(ray.alive_nodes) == 1 + ray_workers, 180, "the Ray nodes", every_s=1.0)
        say(f"starting hexdispatch serve --workers {workers} ...")
        front_doors = FrontDoors(home, workers, postgres.dsn, redis_server.url if redis_server else None,
                                 ray.address, secret, server_env or {})
        stack.callback(front_doors.stop)
        front_doors.start()
        yield World(home, postgres, redis_server, ray, front_doors, secret)


def _copy_logs(home: Path, logs: Path) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    for log in home.glob("*.log"):
        shutil.copyfile(log, logs / log.name)


def _quietly(read, default=None):
    """``read()``, or ``default`` while what it asks is not up yet."""
    try:
        return read()
    except Exception:
        return default
