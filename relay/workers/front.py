"""The front of a multi-process node: an ASGI middleware on the public app that sends each
viewer's WHEP POST to the least-loaded process (itself or a worker on loopback), routes the
session's later requests (PATCH, DELETE, layer PUT) by the worker named in its resource id,
merges the workers' /metrics into its own and starts/stops the workers with the app.

It sits inside the request guards (body cap, per-address POST rate) so they count the real
client once for the whole node; the worker gets the client's address in X-Forwarded-For
(believed from loopback: ``worker_settings``) and the node's worker key, without which it
refuses WHEP."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import httpx
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.auth.tokens import LINK_SUBJECT_PREFIX, TokenAuthority, bearer_token
from relay.errors import StagecastError
from relay.http.common import ROOM_PATTERN
from relay.http.problems import PROBLEM_TYPE, TYPE_BASE
from relay.media.stream_key import StreamKey
from relay.workers.metrics import merge_expositions
from relay.workers.policy import FRONT, WORKER_KEY_HEADER, split_session_id, worker_session_id
from relay.workers.supervisor import WorkerSupervisor

log = logging.getLogger(__name__)

LINK_HEADER = "x-stagecast-link"
# Strict: a room as check_room takes it, a resource id of URL-safe characters (and a worker
# prefix). The path is percent-decoded: a looser match let "/whep/secret%3F/1.x" through
# ungated and became "POST /whep/secret" at the worker. Anything else is the front's own.
_ROOM = f"({ROOM_PATTERN.pattern})"
_POST = re.compile(rf"^/whep/{_ROOM}$")
_SESSION = re.compile(
    rf"^/whep/{_ROOM}/([0-9]{{1,3}}\.[A-Za-z0-9_-]{{1,64}}|[A-Za-z0-9_-]{{1,64}})(/layer)?$"
)
# not passed on either way: the hop's own, and what the front sets itself
_HOP = {
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "x-forwarded-for",
    "upgrade",
    "te",
}
_HOP_BACK = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}


async def send_problem(
    send: Send,
    status: int,
    title: str,
    detail: str,
    slug: str,
    headers: dict[str, str] | None = None,
) -> None:
    body = json.dumps(
        {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    ).encode()
    raw = [(b"content-type", PROBLEM_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes) -> Receive:
    """A ``receive`` that hands the app the body already read (then waits: disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


Gate = Callable[[Request, StreamKey], Awaitable[None]]
"""The checks a WHEP POST passes at the node before it is served (authorization, the cluster's
routing: 307 to an edge, 503), raising ``StagecastError``: the route's own gate, run by the
front for the POSTs it forwards (a worker knows no room policies)."""


def _layer(query: dict[str, str]) -> str | None:
    layer = query.get("layer")
    return None if layer in (None, "auto") else layer


class WorkerFront:
    def __init__(
        self,
        app: ASGIApp,
        *,
        supervisor: WorkerSupervisor,
        tokens: TokenAuthority,
        worker_key: str,
        gate: Gate | None = None,
        max_viewers: int | None = None,
        room_limit: Callable[[str], int | None] | None = None,
        room_viewers: Callable[[str], int] | None = None,
        retry_after: int = 2,
    ) -> None:
        """``room_limit``: a room's viewer limit on this node (None: none); ``room_viewers``: the
        front's own viewers of a room (the workers' come from their reports)."""
        self.app = app
        self.supervisor = supervisor
        self.assigner = supervisor.assigner
        self.tokens = tokens
        self.worker_key = worker_key
        self.gate = gate
        self.room_limit = room_limit
        self.room_viewers = room_viewers
        self.max_viewers = max_viewers
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if WORKER_KEY_HEADER in headers:  # only the front may send it, and only to its workers
            await send_problem(
                send,
                400,
                "Bad request",
                "a request may not carry the node's internal header",
                "bad-request",
            )
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/metrics":
            await self._metrics(scope, receive, send)
            return
        m = _POST.match(path)
        if m is not None and method == "POST":
            await self._post(scope, receive, send, m.group(1), headers)
            return
        m = _SESSION.match(path)
        if m is not None and method != "OPTIONS":
            room, resource, tail = m.group(1), m.group(2), m.group(3) or ""
            split = split_session_id(resource)
            worker = None if split is None else self.supervisor.worker(split[0])
            if split is not None and split[0] == FRONT:
                await self.app(scope, receive, send)
                return
            if split is None or worker is None:
                await send_problem(send, 404, "Not found", "no such session", "not-found")
                return
            target = f"/whep/{room}/{split[1]}{tail}"
            await self._forward(scope, receive, send, split[0], target, headers, room=room)
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.supervisor.start()
            await send(message)

        async def receive_() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.supervisor.stop()
            return message

        await self.app(scope, receive_, send_)

    def _is_link(self, scope: Scope, room: str, headers: dict[str, str]) -> bool:
        """A worker's (or another node's) pull: served here, as every pull is."""
        if LINK_HEADER not in headers:
            return False
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            token = bearer_token(
                headers.get("authorization"), (query.get("access_token") or [None])[0]
            )
            if token is None:
                return False
            claims = self.tokens.verify(token, room=room, role="audience")
        except StagecastError:
            return False
        return claims.subject.startswith(LINK_SUBJECT_PREFIX)

    async def _post(
        self, scope: Scope, receive: Receive, send: Send, room: str, headers: dict[str, str]
    ) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "mixminus" in query or self._is_link(scope, room, headers):
            await self.app(scope, receive, send)  # mixed (or pulled) where the anchors are
            return
        if self.gate is not None:  # the route's own checks, once, before a worker sees it
            q = {k: v[0] for k, v in query.items() if v}
            key = StreamKey(room, q.get("rendition") or _layer(q), q.get("anchor"), None)
            try:
                await self.gate(Request({**scope, "path_params": {"room": room}}), key)
            except StagecastError as exc:
                await send_problem(
                    send, exc.status, exc.title, exc.detail, exc.type_slug, exc.headers
                )
                return
        if self.max_viewers is not None and self.assigner.viewers() >= self.max_viewers:
            await send_problem(
                send,
                503,
                "Service unavailable",
                "this node serves its most viewers",
                "unavailable",
                {"Retry-After": str(self.retry_after)},
            )
            return
        limit = self.room_limit(room) if self.room_limit is not None else None
        if limit is not None:  # the whole node's viewers of the room, not one process's
            own = self.room_viewers(room) if self.room_viewers is not None else 0
            if own + self.assigner.worker_room_viewers(room) >= limit:
                await send_problem(
                    send,
                    503,
                    "Service unavailable",
                    f"room {room!r} has its most viewers on this node",
                    "unavailable",
                    {"Retry-After": str(self.retry_after)},
                )
                return
        body = await read_body(receive)
        tried: set[int] = set()
        while True:
            worker = self.assigner.pick(frozenset(tried), room)
            if worker is None or worker == FRONT:
                # the front itself, or every worker refused: the front answers (its own limits)
                await self.app(scope, replay(body), send)
                return
            tried.add(worker)
            resp = await self._call(scope, worker, f"/whep/{room}", headers, body)
            if resp is None or resp.status_code == 503:
                self.assigner.release(worker, room)
                continue  # that worker is full, busy or restarting: the next one
            await self._respond(send, resp, worker, room)
            return

    async def _call(
        self, scope: Scope, worker: int, target: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response | None:
        w = self.supervisor.worker(worker)
        if w is None or not w.http_port:
            return None
        out = {k: v for k, v in headers.items() if k not in _HOP}
        client = scope.get("client")
        if client:
            out["x-forwarded-for"] = str(client[0])
        out[WORKER_KEY_HEADER] = self.worker_key
        qs = scope.get("query_string", b"").decode("latin-1")
        url = w.base_url + target + (f"?{qs}" if qs else "")
        try:
            return await self.supervisor.http.request(
                scope["method"], url, headers=out, content=body
            )
        except httpx.HTTPError as exc:
            log.warning("worker %d did not answer %s %s: %s", worker, scope["method"], target, exc)
            return None

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        worker: int,
        target: str,
        headers: dict[str, str],
        *,
        room: str,
    ) -> None:
        body = await read_body(receive)
        resp = await self._call(scope, worker, target, headers, body)
        if resp is None:
            await send_problem(
                send,
                503,
                "Service unavailable",
                "the session's worker is restarting",
                "unavailable",
                {"Retry-After": str(self.retry_after)},
            )
            return
        await self._respond(send, resp, worker, room)

    async def _respond(self, send: Send, resp: httpx.Response, worker: int, room: str) -> None:
        raw: list[tuple[bytes, bytes]] = []
        for k, v in resp.headers.multi_items():
            key = k.lower()
            if key in _HOP_BACK:
                continue
            if key == "location" and resp.status_code == 201:
                prefix = f"/whep/{room}/"
                if v.startswith(prefix):
                    v = prefix + worker_session_id(worker, v[len(prefix) :])
            raw.append((key.encode("latin-1"), v.encode("latin-1")))
        body = resp.content
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": resp.status_code, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The front's own exposition (its route checks the credential), then every worker's,
        each series labelled with its process."""
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        if start.get("status") != 200:
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks)})
            return
        texts = {FRONT: b"".join(chunks).decode() + self._own_metrics()}
        texts.update(await self.supervisor.scrape())
        body = merge_expositions(texts)
        raw = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    def _own_metrics(self) -> str:
        lines = [
            "# HELP stagecast_worker_restarts Times a worker process was restarted",
            "# TYPE stagecast_worker_restarts counter",
        ]
        for w in self.supervisor.workers.values():
            lines.append(f'stagecast_worker_restarts_total{{worker="{w.index}"}} {w.restarts}')
        lines += [
            "# HELP stagecast_node_viewers Viewers of the whole node, as its front counts them",
            "# TYPE stagecast_node_viewers gauge",
            f"stagecast_node_viewers {self.assigner.viewers()}",
        ]
        return "\n" + "\n".join(lines) + "\n"
