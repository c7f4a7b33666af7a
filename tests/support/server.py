"""A real uvicorn serving the gateway on a free loopback port, in a thread of the test process.

Running in-process (own event loop, own thread) lets tests count the server's tasks and peer
connections directly while every byte still goes over real sockets.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from gateway.api_runtime import count_peer_connections
from gateway.app import Gateway, build_gateway, create_app
from gateway.launcher import free_port, free_udp_port
from gateway.settings import Settings
from relay.server.main import forwarded_headers

SECRET = "test-secret-" + "x" * 40


@dataclass
class RunningServer:
    base_url: str
    settings: Settings
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    server: uvicorn.Server

    def call(self, fn: Any, timeout: float = 10.0) -> Any:
        """Run ``fn()`` on the server's loop (thread-safe) and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def task_count(self) -> int:
        return int(self.call(lambda: len(asyncio.all_tasks(self.loop))))

    def anchor_token(self, room: str, ttl: float = 600) -> str:
        return self.gateway.tokens.mint(room, "anchor", "test-anchor", ttl)

    def audience_token(self, room: str, ttl: float = 600) -> str:
        return self.gateway.tokens.mint(room, "audience", "test-viewer", ttl)


def live_peer_connections() -> int:
    """Open peer connections in this process, the frozen ones too (relay.ops.gc_freezer)."""
    return count_peer_connections()


@contextmanager
def run_server(port: int | None = None, **overrides: Any) -> Iterator[RunningServer]:
    """A gateway on ``port`` (default: a free one) with ``overrides`` on top of test settings."""
    port = port or free_port()
    base: dict[str, Any] = {"host": "127.0.0.1", "port": port}
    auth = {"token_secret": SECRET, "anonymous_audience": True}
    auth.update(overrides.pop("auth", {}))
    # The server shares the pytest process and churns sessions far faster than real use: its
    # loop thread may pass 80 % of a core for seconds, so the CPU admission check is off unless
    # a test sets it (tests/live/test_api.py covers it; the loop-lag check stays on).
    limits: dict[str, Any] = {"max_loop_busy": None}
    limits.update(overrides.pop("limits", {}))
    # The default mode (one UDP port per node), but one process runs many servers and other
    # suites run beside it: each its own free port unless a test gives one (0: per-peer ports).
    webrtc: dict[str, Any] = {"udp_port": free_udp_port()}
    webrtc.update(overrides.pop("webrtc", {}))
    settings = Settings(**base, auth=auth, limits=limits, webrtc=webrtc, **overrides)
    loop = asyncio.new_event_loop()
    holder: dict[str, Any] = {}

    def target() -> None:
        asyncio.set_event_loop(loop)
        gateway = build_gateway(settings)
        app = create_app(settings, gateway)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            **forwarded_headers(settings),  # whose X-Forwarded-For is believed: as in production
        )
        server = uvicorn.Server(config)
        holder["gateway"], holder["server"] = gateway, server
        loop.run_until_complete(server.serve())
        loop.close()

    thread = threading.Thread(target=target, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (holder.get("server") and holder["server"].started):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    running = RunningServer(
        f"http://127.0.0.1:{port}", settings, holder["gateway"], loop, holder["server"]
    )
    try:
        yield running
    finally:
        running.server.should_exit = True
        thread.join(15)
