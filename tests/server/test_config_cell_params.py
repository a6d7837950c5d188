"""``HEXDISPATCH_CELL_PARAMS`` / ``HEXDISPATCH_CELL_TICK_S`` / ``HEXDISPATCH_CELL_RES``: live dispatch knobs from the environment."""

from __future__ import annotations

import json

import pytest

from dispatch.cell import CellParams
from dispatch.matcher import MatchParams
from server.config import Settings
from server.gateway import GatewayParams


def test_no_variables_keep_the_defaults():
    assert Settings.from_env({}).gateway == GatewayParams()


def test_cell_params_merge_into_the_defaults_nested_match_included():
    env = {
        "HEXDISPATCH_CELL_PARAMS": json.dumps({"speed_kmh": 192, "offer_ttl_s": 7.5,
                                                "match": {"commit_window": 0.2, "max_bundle_size": 3}}),
        "HEXDISPATCH_CELL_TICK_S": "0.1",
        "HEXDISPATCH_CELL_RES": "4",
    }
    gateway = Settings.from_env(env).gateway
    assert gateway.cell_res == 4 and gateway.cell_tick_s == 0.1
    assert gateway.cell.speed_kmh == 192.0 and isinstance(gateway.cell.speed_kmh, float)
    assert gateway.cell.offer_ttl_s == 7.5
    assert gateway.cell.heartbeat_ttl_s == CellParams().heartbeat_ttl_s  # untouched keys keep their defaults
    assert gateway.cell.match.commit_window == 0.2 and gateway.cell.match.max_bundle_size == 3
    assert gateway.cell.match.lookahead == MatchParams().lookahead


@pytest.mark.parametrize("value, message", [
    ('{"speed": 30}', "unknown key 'speed'"),
    ('{"match": {"commit": 1}}', "HEXDISPATCH_CELL_PARAMS.match: unknown key 'commit'"),
    ('{"policy": 1}', "HEXDISPATCH_CELL_PARAMS.policy: expected str"),
    ('{"match": {"max_bundle_size": 2.5}}', "max_bundle_size: expected int"),
    ('{"match": 2}', "match: expected a JSON object"),
    ("[1, 2]", "expected a JSON object"),
    ("speed_kmh=30", "not JSON"),
])
def test_bad_cell_params_are_refused_with_the_key_named(value, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        Settings.from_env({"HEXDISPATCH_CELL_PARAMS": value})


def test_tick_must_be_positive():
    with pytest.raises(ValueError, match="HEXDISPATCH_CELL_TICK_S"):
        Settings.from_env({"HEXDISPATCH_CELL_TICK_S": "0"})


def test_gps_rate_from_the_environment():
    limits = Settings.from_env({"HEXDISPATCH_GPS_RATE": "50"}).rate_limits
    assert (limits.gps.rate, limits.gps.burst) == (50.0, 250.0)
    assert limits.ws_message == Settings.from_env({}).rate_limits.ws_message
    assert Settings.from_env({}).rate_limits.gps.rate == 2.0


@pytest.mark.parametrize("value", ["fast", "0", "-1", "1e9"])
def test_bad_gps_rate_is_refused_with_its_name(value):
    with pytest.raises(ValueError, match="HEXDISPATCH_GPS_RATE"):
        Settings.from_env({"HEXDISPATCH_GPS_RATE": value})
