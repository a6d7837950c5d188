"""ray_cluster.yaml is a valid cluster-launcher config, and cells go where it says."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

from server.gateway import GatewayParams, cell_placement

CONFIG = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


def test_cluster_config_is_valid_for_the_launcher():
    config = fillout_defaults(yaml.safe_load(CONFIG.read_text()))
    validate_config(config)
    types = config["available_node_types"]
    resource = GatewayParams().cell_resource
    assert types[config["head_node_type"]]["resources"].get(resource, 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"][resource] > 0 for t in workers)
    assert any("pip install" in c and "hexdispatch" in c for c in config["setup_commands"])
    assert any("hexdispatch serve" in c and "RAY_ADDRESS" in c for c in config["head_start_ray_commands"])
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)


def test_cells_use_the_resource_only_where_the_cluster_offers_it():
    assert cell_placement("cell_host", {"CPU": 2.0}) == {}
    assert cell_placement("cell_host", {"CPU": 16.0, "cell_host": 64.0}) == {
        "resources": {"cell_host": 0.001}, "scheduling_strategy": "SPREAD"}
