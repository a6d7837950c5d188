"""Benchmarks and offline replays (the I/O shells around the dispatch core)."""
