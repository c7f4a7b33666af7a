"""The worker side of a multi-process node: a local edge started by the front, which reads its
secrets from stdin, ends when stdin closes (the front is gone), and serves WHEP only to
requests that carry the node's worker key (those the front sent)."""

from __future__ import annotations

import hmac
import json
import os
import signal
import threading
from typing import IO, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from relay.workers.front import send_problem
from relay.workers.policy import ROOMS_PATH, WORKER_KEY_HEADER

HANDSHAKE_KEYS = ("worker_key", "token_secret", "operator_key", "metrics_token")


def read_handshake(stream: IO[bytes]) -> dict[str, Any]:
    """The JSON line the front writes to a worker's stdin when it starts it."""
    line = stream.readline()
    if not line:
        raise SystemExit("a worker is started by its node's front (--workers N), not by hand")
    data = json.loads(line)
    if not isinstance(data, dict) or not data.get("worker_key"):
        raise SystemExit("a worker's handshake names its worker_key")
    return data


def exit_with_parent(stream: IO[bytes]) -> None:
    """SIGTERM this process (a clean uvicorn shutdown) when ``stream`` (the front's pipe) hits
    EOF: the front exited, however it exited (PR_SET_PDEATHSIG covers a kill -9 as well)."""

    def watch() -> None:
        while stream.read(4096):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class WorkerGuard:
    """Refuses WHEP requests that did not come through the front (403 problem+json): the front
    authorized them, counted them against the node's limits and assigned them here."""

    def __init__(self, app: ASGIApp, *, worker_key: str) -> None:
        self.app = app
        self.key = worker_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(("/whep/", ROOMS_PATH)):
            sent = dict(scope["headers"]).get(WORKER_KEY_HEADER.encode(), b"")
            if not hmac.compare_digest(sent, self.key):
                await send_problem(
                    send, 403, "Forbidden", "a worker serves its node's front only", "forbidden"
                )
                return
        await self.app(scope, receive, send)
