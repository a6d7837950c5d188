"""What a newcomer meets first on the command line (issue 15, item 4): bare ``hexdispatch`` and every
``--help``, one-line errors for bad settings, ``token`` never signing with a secret it made up, and
``make run PORT= HOST=``. Every case runs the real console script in a subprocess."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.environment import child_environment

BIN = Path(sys.executable).with_name("hexdispatch")
REPO = Path(__file__).resolve().parents[2]
#: A bad setting must be refused well before the ~30 s a connection attempt used to take.
FAST_S = 20.0

COMMANDS = ["serve", "token", "replay", "simulate", "bench peak", "bench chaos", "bench nearest", "bench mdrp",
            "bench catalog", "bench quality", "bench speed", "bench fuzz"]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], cwd=cwd, env=child_environment(**env), capture_output=True, text=True,
                          timeout=120)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bare_command_prints_usage_and_exits_2(tmp_path):
    done = run([], tmp_path)
    assert done.returncode == 2
    assert "usage: hexdispatch COMMAND" in done.stderr and "serve" in done.stderr
    assert run(["--help"], tmp_path).returncode == 0


@pytest.mark.parametrize("command", COMMANDS)
def test_help_states_every_default_and_has_no_doc_markup(command, tmp_path):
    done = run([*command.split(), "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for markup in ("``", ":func:", ":class:", ":data:", ":mod:", ":meth:"):
        assert markup not in text, f"{command} --help shows {markup!r}"
    usage = text.split("\n\n")[0]
    # Optional options that take a value appear in the usage as [--name VALUE]; each one's help names its default.
    options = re.findall(r"\[(--[\w-]+) [^\]\[]+\]", usage)
    assert options or command == "token", usage
    body = text[len(usage):]
    for option in options:
        block = re.search(rf"^  (?:-\w, )?{re.escape(option)}[ ,].*?(?=^  -|\Z)", body, re.M | re.S)
        assert block is not None, f"{command}: {option} not described"
        assert "default" in block.group(0).lower(), f"{command} {option}: no default shown:\n{block.group(0)}"


BAD_SETTINGS = [
    ({"HEXDISPATCH_CELL_RES": "fine"}, "HEXDISPATCH_CELL_RES"),
    ({"HEXDISPATCH_CELL_TICK_S": "soon"}, "HEXDISPATCH_CELL_TICK_S"),
    ({"HEXDISPATCH_CELL_PARAMS": "{offer_ttl_s: 3"}, "HEXDISPATCH_CELL_PARAMS: not JSON"),
    ({"HEXDISPATCH_CELL_PARAMS": '{"offer_ttl": 3}'}, "unknown key 'offer_ttl'"),
    ({"HEXDISPATCH_CELL_PARAMS": '{"offer_ttl_s": "3"}'}, "HEXDISPATCH_CELL_PARAMS.offer_ttl_s"),
    ({"HEXDISPATCH_MAX_CELLS": "many"}, "HEXDISPATCH_MAX_CELLS"),
    ({"HEXDISPATCH_MAX_SPEED_MPS": "-1"}, "HEXDISPATCH_MAX_SPEED_MPS"),
    ({"HEXDISPATCH_GPS_RATE": "fast"}, "HEXDISPATCH_GPS_RATE"),
    ({"HEXDISPATCH_SERVICE_AREA": "not-a-cell"}, "HEXDISPATCH_SERVICE_AREA"),
    ({"HEXDISPATCH_WORKERS": "two"}, "HEXDISPATCH_WORKERS"),
    ({"HEXDISPATCH_MIGRATE_ON_START": "maybe"}, "HEXDISPATCH_MIGRATE_ON_START"),
    ({"DATABASE_URL": "mysql://root@localhost/db"}, "DATABASE_URL: expected postgresql://"),
    ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:port/x"}, "DATABASE_URL: the port is not a number"),
    ({"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL: expected redis://"),
]


@pytest.mark.parametrize(("env", "named"), BAD_SETTINGS, ids=[next(iter(e)) + "=" + next(iter(e.values()))
                                                              for e, _ in BAD_SETTINGS])
def test_a_bad_setting_is_one_line_and_exit_2(env, named, tmp_path):
    started = time.monotonic()
    done = run(["serve", "--port", str(closed_port())], tmp_path, **env)
    assert time.monotonic() - started < FAST_S
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hexdispatch serve: ") and named in lines[0], done.stderr
    assert not (tmp_path / ".hexdispatch").exists(), "nothing may be started or written before the settings parse"


def test_an_unreachable_database_is_one_line_and_fast(tmp_path):
    port = closed_port()
    started = time.monotonic()
    done = run(["serve"], tmp_path, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/hexdispatch")
    assert time.monotonic() - started < FAST_S
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert f"DATABASE_URL: cannot connect to postgresql://postgres@127.0.0.1:{port}/hexdispatch" in done.stderr


def test_an_unreachable_redis_is_one_line_and_fast(tmp_path):
    started = time.monotonic()
    done = run(["serve", "--workers", "2"], tmp_path, REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")
    assert time.monotonic() - started < FAST_S
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("hexdispatch serve: REDIS_URL: cannot reach") and done.stderr.count("\n") == 1


def test_token_refuses_to_make_up_a_secret_and_says_which_it_used(tmp_path):
    done = run(["token", "--role", "admin", "--sub", "ops"], tmp_path)
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    secret = tmp_path / ".hexdispatch" / "jwt_secret"
    assert f"no JWT secret at {secret}" in done.stderr
    assert not secret.exists()

    made = run(["token", "--role", "admin", "--sub", "ops", "--new-secret"], tmp_path)
    assert made.returncode == 0 and secret.exists()
    assert made.stderr.strip() == f"hexdispatch token: signed with {secret}"
    assert made.stdout.count(".") == 2  # one JWT: header.payload.signature

    again = run(["token", "--role", "admin", "--sub", "ops"], tmp_path)
    assert again.returncode == 0 and again.stderr.strip() == f"hexdispatch token: signed with {secret}"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = run(["token", "--role", "driver", "--sub", "d-1"], elsewhere, HEXDISPATCH_HOME=str(tmp_path / ".hexdispatch"))
    assert home.returncode == 0 and home.stderr.strip() == f"hexdispatch token: signed with {secret}"
    env = run(["token", "--role", "driver", "--sub", "d-1"], elsewhere, HEXDISPATCH_JWT_SECRET="s" * 40)
    assert env.returncode == 0 and env.stderr.strip() == "hexdispatch token: signed with HEXDISPATCH_JWT_SECRET"
    assert not (elsewhere / ".hexdispatch").exists()


def test_make_run_takes_port_and_host():
    done = subprocess.run(["make", "-n", "run", "PORT=8123", "HOST=0.0.0.0"], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "MAKEFLAGS": ""}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "hexdispatch serve --host 0.0.0.0 --port 8123" in done.stdout
    default = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "hexdispatch serve --host 127.0.0.1 --port 8000" in default.stdout


def test_simulate_without_a_server_is_one_line_and_fast(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    done = run(["simulate", "--url", url, "--duration", "1"], tmp_path, HEXDISPATCH_JWT_SECRET="s" * 40)
    assert time.monotonic() - started < FAST_S
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"hexdispatch simulate: no hexdispatch server answers at {url} (ConnectError): "
                                   "start one with `hexdispatch serve`, or give its address with --url")


def test_simulate_outside_the_servers_home_names_the_missing_secret(tmp_path):
    done = run(["simulate", "--url", f"http://127.0.0.1:{closed_port()}"], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"hexdispatch simulate: no JWT secret at {tmp_path / '.hexdispatch' / 'jwt_secret'}")
    assert not (tmp_path / ".hexdispatch").exists()


def test_simulate_against_a_silent_listener_is_one_line_and_fast(tmp_path):
    """A port that accepts connections but never answers (a hung process) ends simulate within its health timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        done = run(["simulate", "--url", url], tmp_path, HEXDISPATCH_JWT_SECRET="s" * 40)
    assert time.monotonic() - started < FAST_S
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"hexdispatch simulate: no hexdispatch server answers at {url} (ReadTimeout)")
