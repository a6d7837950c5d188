"""Persistence: SQL over asyncpg, one module per aggregate. Functions take a connection (or pool) and plain values.

Below ``actors`` and ``server`` in the layering (see ``tests/test_architecture.py``): it imports only
``dispatch`` and raises the domain errors of :mod:`store.errors`, never HTTP errors; the API edge
(``server.errors``) maps them to statuses.
"""
