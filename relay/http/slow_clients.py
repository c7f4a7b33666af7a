"""Bounds on what a slow or silent HTTP client can hold: header and body read time, and the
connections one address may keep the node waiting on at once.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``): a connection that
never sends its headers, or a chunked body that never ends, or a body trickled a byte every few
seconds, held a connection and a descriptor for as long as the client liked (300 of them held
300 descriptors). An ASGI middleware cannot help with headers (the app sees a request only once
they are in), so the bounds live in uvicorn's HTTP protocol: ``guarded_http_protocol`` makes a
subclass of its httptools protocol that uvicorn is given at launch (``uvicorn.run(app,
http=...)``, the node's and the edge's CLI alike).

A connection counts against its client address (an IPv6 address's /64: ``client_key``) while the
node waits on the client: from accepting it until its first request is in (headers and body),
and from the first byte of each later request until that request is in. Idle kept-alive
connections (uvicorn closes them after ``timeout_keep_alive``) and requests the app is working
on do not count: many clients behind one NAT are not refused for polling. One more connection
from an address at its limit is answered 429 and closed. Headers not in within
``header_timeout`` (from accepting the connection, or from the first byte of a later request) or
a body not in within ``body_timeout`` after its headers: 408 (when a request had begun and no
response has), and the connection is closed. A client that stops reading a response (the send
buffer stays full) for ``send_timeout``: the connection is dropped.

``uvicorn`` internals used (pinned by ``tests/unit/test_slow_clients.py``): HttpToolsProtocol's
``on_message_begin``/``on_headers_complete``/``on_message_complete``/``on_response_complete``
callbacks, ``pause_writing``/``resume_writing``, ``transport``, ``client``, ``loop`` and
``cycle`` (``response_started``, ``response_complete``, ``disconnected``, ``message_event``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.http.problems import PROBLEM_TYPE, TYPE_BASE
from relay.http.ratelimit import client_key

log = logging.getLogger(__name__)

REFUSAL_LINGER = 1.0  # seconds a refused connection is read (and discarded) before closing


@dataclass(frozen=True, slots=True)
class SlowClientLimits:
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_per_address: int = 32
    send_timeout: float = 30.0


class AddressGate:
    """Connections the node waits on, per client address (sans-I/O)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.waiting: dict[str, int] = {}
        self.refused = 0
        self.timed_out = 0

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``, unless the address is at its limit."""
        if self.waiting.get(address, 0) >= self.limit:
            self.refused += 1
            return False
        self.add(address)
        return True

    def add(self, address: str) -> None:
        """Count a kept-alive connection that begins a request (never refused: it is in)."""
        self.waiting[address] = self.waiting.get(address, 0) + 1

    def release(self, address: str) -> None:
        left = self.waiting.get(address, 0) - 1
        if left > 0:
            self.waiting[address] = left
        else:
            self.waiting.pop(address, None)


def problem_response(status: int, reason: str, detail: str, slug: str, **headers: str) -> bytes:
    """A complete HTTP/1.1 problem+json response that closes the connection."""
    body = json.dumps(
        {"type": TYPE_BASE + slug, "title": reason, "status": status, "detail": detail}
    ).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"content-type: {PROBLEM_TYPE}",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines and a per-address gate; made for one server
    by ``guarded_http_protocol``."""

    limits: ClassVar[SlowClientLimits]
    address_gate: ClassVar[AddressGate]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None  # armed while the client reads nothing
        self._address: str | None = None  # set while this connection counts
        self._refused = False
        self._request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = client_key(self.client[0]) if self.client else None
        if address is not None:
            if not self.address_gate.admit(address):
                self._refuse()
                return
            self._address = address
        self._arm(self.limits.header_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._unstall()
        self._stop_counting()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if self._timer is None:  # a later request on a kept-alive connection
            if self.client:
                self._address = client_key(self.client[0])
                self.address_gate.add(self._address)
            self._arm(self.limits.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.limits.body_timeout, self._body_late)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._stop_counting()

    def on_response_complete(self) -> None:
        self._request_begun = False
        super().on_response_complete()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(self.limits.send_timeout, self._stalled)

    def resume_writing(self) -> None:
        self._unstall()
        super().resume_writing()

    def _unstall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        """The client has taken nothing of a full send buffer for ``send_timeout``: drop the
        connection (close() would wait to flush a buffer it never takes)."""
        self._stall = None
        self.address_gate.timed_out += 1
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
        log.debug("dropped a connection from %s: it stopped reading", self.client)
        self.transport.abort()

    def _refuse(self) -> None:
        self._refused = True
        log.debug("refused a connection from %s: too many unfinished requests", self.client)
        self.transport.write(
            problem_response(
                429,
                "Too Many Requests",
                "too many unfinished requests from this address",
                "rate-limited",
                retry_after="1",
            )
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()  # then read and discard a moment: no reset
        self.loop.call_later(REFUSAL_LINGER, self.transport.close)

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stop_counting(self) -> None:
        if self._address is not None:
            self.address_gate.release(self._address)
            self._address = None

    def _headers_late(self) -> None:
        self._timer = None
        self._expire("headers", self.limits.header_timeout, answer=self._request_begun)

    def _body_late(self) -> None:
        self._timer = None
        cycle = self.cycle
        answer = cycle is None or not cycle.response_started
        self._expire("body", self.limits.body_timeout, answer=answer)

    def _expire(self, what: str, after: float, *, answer: bool) -> None:
        if self.transport.is_closing():
            return
        self.address_gate.timed_out += 1
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's own answer, if any, goes nowhere
            cycle.message_event.set()
        if answer:
            self.transport.write(
                problem_response(
                    408,
                    "Request Timeout",
                    f"the request {what} did not arrive within {after:g} s",
                    "request-timeout",
                )
            )
        log.debug("closed a connection from %s: request %s too slow", self.client, what)
        self.transport.close()


def guarded_http_protocol(
    limits: SlowClientLimits, gate: AddressGate | None = None
) -> type[GuardedHttpProtocol]:
    """The protocol class to give uvicorn (``http=``): every connection of the server shares
    ``gate`` (a new one by default)."""
    attrs = {"limits": limits, "address_gate": gate or AddressGate(limits.max_per_address)}
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), attrs)
