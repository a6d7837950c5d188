"""The container files: `compose.yaml` wires a working fleet and the `Dockerfile` builds what it runs.

Building the image is not part of the suite (no registry for base images in CI); these checks
catch the mistakes that would only show at `docker compose up`: a service depending on one that
does not exist, a URL naming the wrong host or port, a volume never declared, a server that
cannot reach its Ray head.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def installed_packages() -> list[str]:
    """The top-level packages pyproject.toml installs (its ``packages.find`` include list)."""
    text = (ROOT / "pyproject.toml").read_text()
    include = re.search(r"^include = \[(.*)\]$", text, re.M).group(1)
    return [name.strip().strip('"').rstrip("*") for name in include.split(",")]


def environment(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


def command_text(service: dict) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else shlex.join(command)


def test_the_fleet_has_its_four_parts_and_every_dependency_exists(compose):
    services = compose["services"]
    assert {"server", "postgres", "redis", "ray-head"} <= services.keys()
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            condition = service["depends_on"][dependency]["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck to wait on"


def test_server_urls_name_the_services_and_their_ports(compose):
    services = compose["services"]
    env = environment(services["server"])
    database = urlsplit(env["DATABASE_URL"])
    assert database.scheme == "postgresql" and database.hostname == "postgres" and database.port == 5432
    postgres_env = environment(services["postgres"])
    assert database.username == postgres_env["POSTGRES_USER"]
    assert database.password == postgres_env["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres_env["POSTGRES_DB"]
    redis = urlsplit(env["REDIS_URL"])
    assert redis.scheme == "redis" and redis.hostname == "redis" and redis.port == 6379
    ray_host, ray_port = env["RAY_ADDRESS"].split(":")
    assert ray_host == "ray-head"
    assert f"--port={ray_port}" in command_text(services["ray-head"])
    # several front-door processes share positions, sessions and rate limits through Redis
    assert int(env.get("HEXDISPATCH_WORKERS", "1")) > 1 and env["REDIS_URL"]


def test_every_ray_node_joins_the_head_with_the_same_token_auth(compose):
    services = compose["services"]
    ray_services = [name for name, s in services.items() if "ray start" in command_text(s)]
    assert {"ray-head", "server"} <= set(ray_services)
    for name in ray_services:
        env = environment(services[name])
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), f"{name} must refuse to start without a token"
        text = command_text(services[name])
        if name != "ray-head":
            assert "--address=ray-head:" in text, name
    # cells live on the Ray nodes offering cell_host, never on the front door's node
    assert re.search(r'cell_host\\?"?: 0', command_text(services["server"]))
    assert re.search(r'cell_host\\?"?: [1-9]', command_text(services["ray-head"]))


def test_ray_processes_get_shared_memory_and_the_dashboard_is_published(compose):
    services = compose["services"]
    for name in ("ray-head", "server"):
        assert services[name].get("shm_size"), f"{name}: Ray's object store needs /dev/shm"
    assert any(str(port).endswith(":8265") for port in services["ray-head"]["ports"])
    assert any(str(port).endswith(":8000") for port in services["server"]["ports"])


def test_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


def test_services_built_from_here_share_one_image(compose):
    services = compose["services"]
    built = [s["image"] for s in services.values() if "build" in s]
    assert built == ["hexdispatch:latest"]
    ours = [name for name, s in services.items() if s.get("image") == "hexdispatch:latest"]
    assert {"server", "ray-head"} <= set(ours)


def test_dockerfile_serves_on_all_interfaces_as_an_unprivileged_user(dockerfile):
    assert re.search(r"^FROM python:3\.1[0-9]", dockerfile, re.M)
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.M)
    assert re.search(r"^EXPOSE 8000$", dockerfile, re.M)
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and '"serve"' in cmd.group(1) and '"0.0.0.0"' in cmd.group(1)
    assert "HEALTHCHECK" in dockerfile and "/v1/health" in dockerfile
    # every package the project installs is copied into the image
    for package in installed_packages():
        assert re.search(rf"^COPY {package} ", dockerfile, re.M), package


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".hexdispatch"):
        assert entry in ignored
