"""Process-level helpers shared by the front door and the cell actors (garbage-collector pauses).

Below ``actors`` and ``server`` in the layering (see ``tests/test_architecture.py``): imports nothing of ours.
"""
