"""Put this folder first on PYTHONPATH to make ``import cupy`` fail as on a machine without cupy."""

raise ImportError("No module named 'cupy' (hidden by tests/cupy_absent)")
