"""Starlette front door, HTTP API, persistence and the hexdispatch command line."""
