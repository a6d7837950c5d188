"""The cell lifecycle's settings: HEXDISPATCH_SERVICE_AREA, HEXDISPATCH_MAX_CELLS, HEXDISPATCH_MAX_SPEED_MPS."""

import h3.api.basic_int as h3
import pytest

from server.config import Settings
from server.gateway import GatewayParams

PARIS_RES6 = h3.int_to_str(h3.latlng_to_cell(48.8566, 2.3522, 6))
LONDON_RES4 = h3.int_to_str(h3.latlng_to_cell(51.5074, -0.1278, 4))


def test_defaults_derive_the_area_from_restaurants():
    params = Settings.from_env({}).gateway
    assert params.service_area is None and params.max_cells == GatewayParams().max_cells == 80
    assert params.movement.max_speed_mps == 70.0


def test_service_area_as_a_list_a_file_or_everywhere(tmp_path):
    listed = Settings.from_env({"HEXDISPATCH_SERVICE_AREA": f"{PARIS_RES6}, {LONDON_RES4}"}).gateway.service_area
    assert listed.cells == {h3.str_to_int(PARIS_RES6), h3.str_to_int(LONDON_RES4)}
    area = tmp_path / "area.txt"
    area.write_text(f"# the deployment's cities\n{PARIS_RES6}\n{LONDON_RES4}  # London, coarse\n")
    assert Settings.from_env({"HEXDISPATCH_SERVICE_AREA": str(area)}).gateway.service_area == listed
    assert Settings.from_env({"HEXDISPATCH_SERVICE_AREA": "*"}).gateway.service_area.everywhere


@pytest.mark.parametrize("env, complaint", [
    ({"HEXDISPATCH_SERVICE_AREA": "/no/such/file"}, "neither a list of H3 cells"),
    ({"HEXDISPATCH_SERVICE_AREA": f"{PARIS_RES6} paris"}, "'paris' is not an H3 cell"),
    ({"HEXDISPATCH_MAX_CELLS": "0"}, "HEXDISPATCH_MAX_CELLS"),
    ({"HEXDISPATCH_MAX_CELLS": "many"}, "HEXDISPATCH_MAX_CELLS: expected a number of cells"),
    ({"HEXDISPATCH_MAX_SPEED_MPS": "-3"}, "HEXDISPATCH_MAX_SPEED_MPS"),
])
def test_bad_settings_are_refused_at_start_up(env, complaint):
    with pytest.raises(ValueError, match=complaint):
        Settings.from_env(env)


def test_bad_file_names_the_file(tmp_path):
    area = tmp_path / "area.txt"
    area.write_text("not-a-cell\n")
    with pytest.raises(ValueError, match="area.txt: 'not-a-cell' is not an H3 cell"):
        Settings.from_env({"HEXDISPATCH_SERVICE_AREA": str(area)})


def test_cap_and_speed_from_the_environment():
    params = Settings.from_env({"HEXDISPATCH_MAX_CELLS": "12", "HEXDISPATCH_MAX_SPEED_MPS": "16800"}).gateway
    assert params.max_cells == 12 and params.movement.max_speed_mps == 16800.0
    assert params.movement.slack_m == GatewayParams().movement.slack_m
