"""What a node loads at startup: a node that does not mix imports neither numpy (the mixer
loads it once a room mixes) nor the Redis client (only with ``cluster.redis_url``): ~21 MB of
resident memory a single node or an edge never uses. An origin does not load httpx either (with
click, rich and pygments, which httpx's command line brings: ~4.6 MB) until it calls out: an
edge pull, presence upstream, a webhook."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from gateway.settings import Settings
settings = Settings(cluster={CLUSTER})
if settings.cluster.role == "edge":
    from relay.server.edge import build_edge_node
    build_edge_node(settings)
else:
    from gateway.app import build_gateway, create_app
    create_app(settings, build_gateway(settings))
print(json.dumps({name: name in sys.modules for name in ("numpy", "redis", "aiortc", "httpx")}))
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("cluster", "httpx"),
    [({}, False), ({"role": "edge", "upstream": "http://127.0.0.1:9"}, True)],
    ids=["origin", "edge"],
)
def test_node_starts_without_numpy_or_redis(cluster: dict[str, str], httpx: bool) -> None:
    code = PROBE.replace("{CLUSTER}", repr(cluster))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"numpy": False, "redis": False, "aiortc": True, "httpx": httpx}
