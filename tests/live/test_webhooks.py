"""Webhooks to a real local HTTP receiver: signed bodies, retries with backoff, no blocking."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gateway.synthetic import StampedVideoTrack, whip_publish
from gateway.webhooks import SIGNATURE_HEADER, WebhookDispatcher, verify
from tests.live.test_live_path import wait_for
from tests.support.server import run_server

SECRET = "hook-secret-" + "z" * 30


class Receiver:
    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.events: list[dict[str, object]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()


@contextmanager
def receiver(fail_first: int = 0) -> Iterator[tuple[str, Receiver]]:
    state = Receiver(fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.attempts += 1
                if state.attempts <= state.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                if verify(SECRET, self.headers.get(SIGNATURE_HEADER, ""), body):
                    state.events.append(json.loads(body))
                else:
                    state.bad_signatures += 1
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", state
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_receiver_failing_twice_then_succeeding() -> None:
    with receiver(fail_first=2) as (url, state):
        hooks = WebhookDispatcher([url], SECRET, backoff_base=0.05, max_attempts=5)
        hooks.start()
        hooks.emit("stream.started", {"room": "r"})
        assert await wait_for(lambda: hooks.delivered == 1, 10)
        await hooks.stop()
    assert state.attempts == 3 and state.bad_signatures == 0
    assert state.events[0]["type"] == "stream.started" and state.events[0]["data"] == {"room": "r"}


async def test_gives_up_and_emit_never_blocks() -> None:
    with receiver(fail_first=100) as (url, state):
        hooks = WebhookDispatcher([url], SECRET, backoff_base=0.01, max_attempts=3, queue_size=2)
        hooks.start()
        for i in range(5):  # returns at once even though the receiver keeps failing
            hooks.emit("anchor.left", {"i": i})
        assert hooks.dropped >= 2
        assert await wait_for(lambda: hooks.failed >= 1, 10)
        await hooks.stop()
    assert state.attempts >= 3


def test_signature_rejects_tampering() -> None:
    from gateway.webhooks import sign

    body = b'{"a":1}'
    header = sign(SECRET, int(__import__("time").time()), body)
    assert verify(SECRET, header, body)
    assert not verify(SECRET, header, b'{"a":2}')
    assert not verify("other" * 10, header, body)
    assert not verify(SECRET, "garbage", body)


@pytest.mark.timeout(60)
async def test_gateway_emits_anchor_and_stream_events() -> None:
    with receiver() as (url, state):
        with run_server(webhooks={"urls": [url], "secret": SECRET}) as server:
            pub = await whip_publish(
                server.base_url,
                "hooked",
                server.anchor_token("hooked"),
                video=StampedVideoTrack(320, 180, 15),
            )
            assert await wait_for(lambda: len(state.events) >= 2, 10)
            await pub.close()
            assert await wait_for(lambda: len(state.events) >= 4, 10)
        types = [e["type"] for e in state.events]
        assert sorted(types) == ["anchor.joined", "anchor.left", "stream.ended", "stream.started"]
        left = next(e for e in state.events if e["type"] == "anchor.left")
        assert left["data"]["room"] == "hooked" and left["data"]["reason"] == "deleted"  # type: ignore[index]
        await asyncio.sleep(0)
