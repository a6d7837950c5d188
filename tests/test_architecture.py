"""The import graph between our top-level packages: layered, no cycle (grimp reads every import, lazy ones too).

The layering, highest first; a package may import only packages below it:

* ``bench``: benchmarks and replays, may use anything.
* ``clients``: driver and customer clients (they mint test tokens with ``server.auth``).
* ``server``: the front door, the HTTP API and its edge errors (``ApiError``).
* ``actors``: the Ray cell actors. They never import ``server``: what a refused write is, they
  learn from ``store``'s domain errors, never from an HTTP error.
* ``store`` | ``runtime`` | ``wire``: persistence (domain errors only), process helpers, the wire
  frames; independent of each other.
* ``dispatch``: the pure core; imports nothing of ours.
"""

from __future__ import annotations

import graphlib
import importlib.util

import grimp
import pytest

from tests.test_container import installed_packages

LAYERS = (("bench",), ("clients",), ("server",), ("actors",), ("store", "runtime", "wire"), ("dispatch",))


@pytest.fixture(scope="module")
def packages() -> list[str]:
    names = installed_packages()
    assert {"dispatch", "actors", "server", "store"} <= set(names)
    return names


@pytest.fixture(scope="module")
def graph(packages) -> grimp.ImportGraph:
    return grimp.build_graph(*packages)


def chain(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    """One import path from ``importer`` to ``imported`` (modules), for a readable failure."""
    route = graph.find_shortest_chain(importer=importer, imported=imported, as_packages=True)
    return " -> ".join(route or (importer, imported))


def test_every_installed_package_has_a_layer(packages):
    layered = {name for layer in LAYERS for name in layer}
    assert set(packages) <= layered, f"place {sorted(set(packages) - layered)} in LAYERS"


def test_no_import_cycle_between_top_level_packages(graph, packages):
    depends_on = {
        importer: {imported for imported in packages
                   if imported != importer and graph.direct_import_exists(importer=importer, imported=imported,
                                                                          as_packages=True)}
        for importer in packages
    }
    try:
        tuple(graphlib.TopologicalSorter(depends_on).static_order())
    except graphlib.CycleError as cycle:
        members = cycle.args[1]
        routes = [chain(graph, a, b) for a, b in zip(members, members[1:])]
        pytest.fail("import cycle between packages:\n" + "\n".join(routes))


def test_packages_import_only_the_layers_below_them(graph, packages):
    present = [tuple(name for name in layer if name in packages) for layer in LAYERS]
    layers = [grimp.Layer(*layer, independent=True) for layer in present if layer]
    illegal = graph.find_illegal_dependencies_for_layers(layers=layers)
    routes = sorted(chain(graph, dependency.importer, dependency.imported) for dependency in illegal)
    assert not routes, "imports against the layering:\n" + "\n".join(routes)


def test_below_the_api_nothing_raises_or_catches_http_errors(graph):
    """``ApiError`` (an HTTP status) belongs to the server; persistence and the actors use domain errors."""
    for below in ("actors", "store", "runtime", "dispatch"):
        if importlib.util.find_spec(below) is not None:
            assert not graph.chain_exists(importer=below, imported="server.errors", as_packages=True), below
