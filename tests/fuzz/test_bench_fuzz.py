"""``hexdispatch bench fuzz`` end to end at a toy size (HTTP only: no Ray of its own inside the test session)."""

from __future__ import annotations

from bench import fuzz


def test_bench_fuzz_runs_and_reports(postgres_server, capsys):
    assert fuzz.main(["--examples", "15", "--only", "http", "--database-url", postgres_server]) == 0
    out = capsys.readouterr().out
    assert "fuzz: 15 examples per property" in out
    assert "http: held" in out and "server healthy afterwards: True" in out
