"""A real edge relay (``stagecast relay``'s app) on uvicorn in a thread of the test process,
pulling from ``upstream``; its peer connections and sessions can be counted directly, like
tests/support/server.py's origin. In-memory registry: the edge is in no cluster with its origin."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from gateway.launcher import free_port, free_udp_port
from gateway.settings import Settings
from relay.server.edge import EdgeNode, build_edge_node, create_edge_app
from relay.server.main import forwarded_headers
from tests.support.server import SECRET

# many viewers of a test come from 127.0.0.1: the per-address POST rate must not refuse them
FAST_POSTS = {"session_posts_per_second": 10_000, "session_post_burst": 10_000}


@dataclass
class RunningEdge:
    base_url: str
    node: EdgeNode
    loop: asyncio.AbstractEventLoop
    server: uvicorn.Server


@contextmanager
def run_edge(upstream: str, **overrides: Any) -> Iterator[RunningEdge]:
    port = free_port()
    auth = {"token_secret": SECRET, "anonymous_audience": True}
    auth.update(overrides.pop("auth", {}))
    limits: dict[str, Any] = {"max_loop_busy": None, **FAST_POSTS}
    limits.update(overrides.pop("limits", {}))
    cluster: dict[str, Any] = {"role": "edge", "upstream": upstream, "node_id": f"edge-{port}"}
    cluster.update(overrides.pop("cluster", {}))
    webrtc: dict[str, Any] = {"udp_port": free_udp_port()}  # nodes on one host: a port each
    webrtc.update(overrides.pop("webrtc", {}))
    settings = Settings(
        host="127.0.0.1",
        port=port,
        auth=auth,
        limits=limits,
        cluster=cluster,
        webrtc=webrtc,
        **overrides,
    )
    loop = asyncio.new_event_loop()
    holder: dict[str, Any] = {}

    def target() -> None:
        asyncio.set_event_loop(loop)
        node = build_edge_node(settings)
        app = create_edge_app(node)  # max_sdp_bytes and ICE servers from node.settings
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", **forwarded_headers(settings)
        )
        server = uvicorn.Server(config)
        holder["node"], holder["server"] = node, server
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=target, name=f"edge-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (holder.get("server") and holder["server"].started):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("edge did not start")
        time.sleep(0.02)
    edge = RunningEdge(f"http://127.0.0.1:{port}", holder["node"], loop, holder["server"])
    try:
        yield edge
    finally:
        edge.server.should_exit = True
        thread.join(15)
