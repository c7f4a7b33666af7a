"""stagecast gateway: WHIP ingest, stages, operator API, pages and CLI, on top of ``relay``."""

import relay  # noqa: F401  (first: its import defers PyAV for aiortc, relay/__init__.py)
