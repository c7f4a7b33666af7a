"""A node process from relay alone: its settings, the app factory with the ops routes every node
serves (healthz, readyz, metrics), the edge node and its ``main`` (``python -m relay``)."""
