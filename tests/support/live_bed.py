"""A test bed for hostile-input tests: an origin (in-process uvicorn), an edge pulling from it
(tests/support/edge_server.py) and a live anchor publishing from the origin's own loop, so that a
module-scoped fixture can share it across tests and sync (hypothesis) test bodies. Everything
runs in this process: sessions and open peer connections can be counted directly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from aiortc.mediastreams import AudioStreamTrack

from gateway.synthetic import Publisher, StampedVideoTrack, whip_publish
from tests.support.edge_server import FAST_POSTS, RunningEdge, run_edge
from tests.support.server import RunningServer, live_peer_connections, run_server

ROOM = "live"
SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}
T = TypeVar("T")


class WarningLog(logging.Handler):
    """Keeps the warnings and errors our own code logs (relay.*, gateway.*) while installed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("relay.", "gateway.")):
            self.records.append(record)

    def messages(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records]


@dataclass
class Bed:
    origin: RunningServer
    edge: RunningEdge
    publisher: Publisher
    log: WarningLog = field(default_factory=WarningLog)

    def sessions(self) -> tuple[int, int, int]:
        """(origin anchors, origin viewers, edge viewers)."""
        gw = self.origin.gateway
        edge = self.edge.node.viewers
        return len(gw.anchors.sessions), len(gw.viewers.sessions), len(edge.sessions)

    def settled(self, baseline: tuple[int, int, int], pcs: int, timeout: float = 15) -> None:
        """Sessions back to ``baseline``, open peer connections to ``pcs`` or fewer (closing
        is asynchronous); AssertionError with what was left behind otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            now = live_peer_connections()
            if self.sessions() == baseline and now <= pcs:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"left behind: sessions {self.sessions()} (were {baseline}),"
                    f" open peer connections {now} (were {pcs})"
                )
            time.sleep(0.1)


def on_loop(srv: RunningServer, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
    """Run ``coro`` on the server's own event loop (its thread) and return the result."""
    return asyncio.run_coroutine_threadsafe(coro, srv.loop).result(timeout)


@contextmanager
def live_bed(**origin: Any) -> Iterator[Bed]:
    never = {"connect_timeout": 3600}  # sessions the tests open stay until they are deleted
    with (
        run_server(limits={**FAST_POSTS, "max_loop_lag": None}, sessions=never, **origin) as srv,
        run_edge(
            srv.base_url,
            limits={"max_loop_lag": None},
            sessions=never,
            cluster={"idle_grace": 3600},
        ) as edge,
    ):
        pub = on_loop(
            srv,
            whip_publish(
                srv.base_url,
                ROOM,
                srv.anchor_token(ROOM),
                video=StampedVideoTrack(160, 90, 15),
                audio=AudioStreamTrack(),
            ),
        )
        bed = Bed(srv, edge, pub)
        logging.getLogger().addHandler(bed.log)
        try:
            yield bed
        finally:
            logging.getLogger().removeHandler(bed.log)
            on_loop(srv, pub.close())


def assert_4xx_problem(resp: httpx.Response, what: str) -> None:
    """A 4xx problem+json that keeps the connection open."""
    assert 400 <= resp.status_code < 500, (what, resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith("application/problem+json"), what
    assert resp.headers.get("connection", "").lower() != "close", what
    body = resp.json()
    assert body["status"] == resp.status_code and body["detail"], what


def open_session(
    client: httpx.Client, path: str, offer: str, headers: dict[str, str]
) -> tuple[str, str]:
    """POST a good offer; (Location, ETag) of the session it opens."""
    resp = client.post(path, content=offer, headers={**SDP, **headers})
    assert resp.status_code == 201, (path, resp.status_code, resp.text[:300])
    return resp.headers["location"], resp.headers["etag"]
