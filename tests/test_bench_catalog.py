"""The catalog benchmark runs end to end at a tiny size and its figures add up."""

import json
import os
import subprocess
import sys


def test_catalog_bench_smoke(tmp_path, postgres_server):
    out = tmp_path / "out"
    env = {**os.environ, "DATABASE_URL": postgres_server}
    result = subprocess.run(
        [sys.executable, "-m", "bench.catalog", "--restaurants", "300", "--items", "3", "--duration", "1",
         "--warmup", "0.2", "--no-postgis", "--out", str(out), "--json", str(tmp_path / "figures.json")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "figures.json").read_text())
    for phase in ("nearby", "menu", "orders"):
        assert figures["phases"][phase]["ok"] > 0, phase
        assert figures["phases"][phase]["ok"] == figures["phases"][phase]["requests"], phase
    orders = figures["phases"]["orders"]["extra"]
    assert orders["count_matches"] and orders["committed"]["with_event"] == orders["committed"]["total"]
    assert (out / "catalog.md").exists() and list(out.glob("catalog_*.png"))
