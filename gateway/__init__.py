"""stagecast gateway: WHIP ingest, stages, operator API, pages and CLI, on top of ``relay``."""
