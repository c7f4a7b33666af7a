"""Slow and silent HTTP clients against real node and edge processes (raw sockets): headers and
bodies have a deadline (408, connection closed), one address cannot keep more than its share of
connections waiting (429), and other clients are served meanwhile."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from gateway.launcher import free_port, free_udp_port, gateway_process, stop_process, wait_healthy
from tests.support.server import SECRET

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 1.5
PER_ADDRESS = 5
SEND_TIMEOUT = 1.5
SLACK = 2.0  # the machine is shared: timers may fire late
ENV = {
    "STAGECAST_LIMITS__HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "STAGECAST_LIMITS__BODY_TIMEOUT": str(BODY_TIMEOUT),
    "STAGECAST_LIMITS__MAX_SLOW_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
    "STAGECAST_LIMITS__SEND_TIMEOUT": str(SEND_TIMEOUT),
    "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
}


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with gateway_process(ENV) as running:
        yield running


@contextmanager
def edge_process(upstream: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "relay",
            "--upstream",
            upstream,
            "--port",
            str(port),
            "--udp-port",
            str(free_udp_port()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ENV},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base)
        yield base
    finally:
        stop_process(proc)


def connect(base: str, source: str = "127.0.0.1") -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
    return sock


def until_closed(
    sock: socket.socket, limit: float, drip: bytes = b"", every: float = 0.25
) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``limit`` passes), sending ``drip``
    every ``every`` seconds meanwhile; and how long that took."""
    start = time.monotonic()
    got = b""
    sock.settimeout(every)
    while time.monotonic() - start < limit:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            if drip:
                try:
                    sock.sendall(drip)
                except OSError:
                    break
            continue
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return got, time.monotonic() - start


def status(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])


@pytest.mark.timeout(60)
def test_silent_connection_is_closed(node: tuple[str, subprocess.Popen[bytes]]) -> None:
    with connect(node[0], "127.0.0.11") as sock:
        got, took = until_closed(sock, HEADER_TIMEOUT + SLACK + 3)
    assert got == b""  # nothing was asked: nothing to answer
    assert HEADER_TIMEOUT - 0.2 <= took <= HEADER_TIMEOUT + SLACK


@pytest.mark.timeout(60)
def test_trickled_headers_get_408(node: tuple[str, subprocess.Popen[bytes]]) -> None:
    with connect(node[0], "127.0.0.12") as sock:
        sock.sendall(b"POST /whep/slow HTTP/1.1\r\nHost: x\r\n")
        got, took = until_closed(sock, HEADER_TIMEOUT + SLACK + 3, drip=b"X")
    assert status(got) == 408, got[:200]
    assert b"application/problem+json" in got
    assert took <= HEADER_TIMEOUT + SLACK


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunked", [False, True])
def test_slow_body_gets_408(node: tuple[str, subprocess.Popen[bytes]], chunked: bool) -> None:
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 5000"
    head = b"POST /whep/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
    with connect(node[0], "127.0.0.13") as sock:
        sock.sendall(head + framing + b"\r\n\r\n")
        got, took = until_closed(
            sock, BODY_TIMEOUT + SLACK + 3, drip=b"1\r\nv\r\n" if chunked else b"v"
        )
    assert status(got) == 408, got[:200]
    assert took <= BODY_TIMEOUT + SLACK


@pytest.mark.timeout(60)
def test_one_address_cannot_hold_more_than_its_share(
    node: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base = node[0]
    with ExitStack() as stack:
        slow = [stack.enter_context(connect(base, "127.0.0.14")) for _ in range(PER_ADDRESS)]
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        time.sleep(0.2)
        with connect(base, "127.0.0.14") as extra:
            got, took = until_closed(extra, 3)
        assert status(got) == 429, got[:200]
        assert b"retry-after" in got.lower()
        assert took < 1.5
        # everyone else is served meanwhile
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.15")) as other:
            start = time.monotonic()
            assert other.get(base + "/healthz", timeout=2).status_code == 200
            assert time.monotonic() - start < 1.0
        # once the slow ones are gone, the address is welcome again
        for sock in slow:
            until_closed(sock, HEADER_TIMEOUT + SLACK)
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.14")) as again:
        assert again.get(base + "/healthz", timeout=2).status_code == 200


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.timeout(90)
def test_300_slow_connections_hold_a_bounded_number_of_descriptors(
    node: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base, proc = node
    before = open_fds(proc.pid)
    with ExitStack() as stack:
        socks = []
        for _ in range(300):
            sock = stack.enter_context(connect(base, "127.0.0.16"))
            sock.sendall(b"POST /whep/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nv")
            socks.append(sock)
        time.sleep(1.2)  # refused ones are closed after a second of reading
        held = open_fds(proc.pid) - before
    assert held <= PER_ADDRESS + 10, held


# ---- a real edge --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_client_that_stops_reading_is_dropped(node: tuple[str, subprocess.Popen[bytes]]) -> None:
    """200 pipelined GETs of the OpenAPI document (~9 MB of answers), never read: once the
    node's send buffer is full it waits SEND_TIMEOUT for the client, then drops the connection
    (before: it held the connection, its buffers and the app's send for as long as the client
    liked)."""
    base = node[0]
    host, port = base.removeprefix("http://").split(":")
    size = len(httpx.get(base + "/openapi.json", timeout=5).content)
    count = 200
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.19", 0))
        sock.connect((host, int(port)))
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        time.sleep(SEND_TIMEOUT + SLACK + 1)
        received, closed = 0, False
        sock.settimeout(1.0)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break  # silence: the node still holds the connection, all sent
            except OSError:
                closed = True  # reset: the node dropped it
                break
            if not chunk:
                closed = True
                break
            received += len(chunk)
    assert closed and received < size * count, (closed, received, size * count)


@pytest.mark.timeout(90)
def test_edge_has_the_same_bounds(node: tuple[str, subprocess.Popen[bytes]]) -> None:
    with edge_process(node[0]) as edge:
        with connect(edge, "127.0.0.17") as sock:
            sock.sendall(b"POST /whep/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            got, took = until_closed(sock, BODY_TIMEOUT + SLACK + 3, drip=b"v")
        # the edge may answer before it reads the body (409: the room is not live), but the
        # connection does not outlive the body's deadline
        assert status(got) in (408, 409), got[:200]
        assert took <= BODY_TIMEOUT + SLACK
        with ExitStack() as stack:
            for _ in range(PER_ADDRESS):
                stack.enter_context(connect(edge, "127.0.0.18"))
            time.sleep(0.2)
            with connect(edge, "127.0.0.18") as extra:
                got, _ = until_closed(extra, 3)
            assert status(got) == 429, got[:200]
