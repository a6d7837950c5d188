"""Clients of the hexdispatch API (used by tests, the simulator and the benchmarks)."""
