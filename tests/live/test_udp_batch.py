"""relay.rtc.udp_batch on real loopback sockets: recvmmsg/sendmmsg (C) and the recvfrom/sendto
fallback read and send the same datagrams, in order, with the same addresses."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest

from relay.rtc import udp_batch

MODES = [pytest.param(True, id="native"), pytest.param(False, id="python")]


def pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    a, b = socket.socket(family, socket.SOCK_DGRAM), socket.socket(family, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((host, 0))
        s.setblocking(False)
    return a, b


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = pair()
    yield a, b
    a.close()
    b.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("native", MODES)
def test_recv_reads_what_is_waiting_up_to_the_limit(
    sockets: tuple[socket.socket, socket.socket], native: bool
) -> None:
    if native and not udp_batch.NATIVE:
        pytest.skip("built without a C compiler")
    a, b = sockets
    assert udp_batch.recv(b, 10, native=native) == []
    sent = [bytes([i]) * (i * 7 % 300 + 1) for i in range(150)]
    for data in sent:
        a.sendto(data, b.getsockname())
    a.sendto(b"x" * (udp_batch.DATAGRAM + 1), b.getsockname())  # too big: dropped
    a.sendto(b"last", b.getsockname())
    time.sleep(0.05)
    first = udp_batch.recv(b, 100, native=native)
    rest = udp_batch.recv(b, 1000, native=native)
    assert len(first) == 100
    assert [d for d, _ in first + rest] == [*sent, b"last"]
    assert {addr for _, addr in first + rest} == {a.getsockname()}
    assert udp_batch.recv(b, 10, native=native) == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("native", MODES)
def test_send_sends_a_list_and_counts_what_the_kernel_refused(
    sockets: tuple[socket.socket, socket.socket], native: bool
) -> None:
    if native and not udp_batch.NATIVE:
        pytest.skip("built without a C compiler")
    a, b = sockets
    to = b.getsockname()
    items = [(bytes([i]) * 100, to) for i in range(200)]
    items.insert(50, (b"nowhere", ("not-an-address", 9)))
    items.insert(60, (memoryview(b"a view"), to))
    assert udp_batch.send(a, items, native=native) == 1
    time.sleep(0.05)
    got = udp_batch.recv(b, 1000, native=native)
    want = [bytes(d) for d, addr in items if addr == to]
    assert [d for d, _ in got] == want


@pytest.mark.timeout(20)
@pytest.mark.parametrize("native", MODES)
def test_ipv6_addresses_come_back_as_host_and_port(native: bool) -> None:
    if native and not udp_batch.NATIVE:
        pytest.skip("built without a C compiler")
    try:
        a, b = pair(socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        assert udp_batch.send(a, [(b"six", ("::1", b.getsockname()[1]))], native=native) == 0
        time.sleep(0.05)
        assert udp_batch.recv(b, 10, native=native) == [(b"six", ("::1", a.getsockname()[1]))]
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("native", MODES)
def test_recv_stamped_gives_the_kernels_arrival_not_the_read_time(
    sockets: tuple[socket.socket, socket.socket], native: bool
) -> None:
    """Datagrams read 0.2 s after they came keep the time they came (transport-cc feedback
    reports it: a late read must not look like queueing in the network)."""
    if native and not udp_batch.NATIVE:
        pytest.skip("built without a C compiler")
    a, b = sockets
    assert udp_batch.enable_stamps(b)
    before = time.monotonic()
    for i in range(20):
        a.sendto(bytes([i]) * 100, b.getsockname())
    sent = time.monotonic()
    time.sleep(0.2)
    got = udp_batch.recv_stamped(b, 100, native=native)
    read = time.monotonic()
    assert [d for d, _, _ in got] == [bytes([i]) * 100 for i in range(20)]
    assert {addr for _, addr, _ in got} == {a.getsockname()}
    arrivals = [at for _, _, at in got]
    assert arrivals == sorted(arrivals)
    # (the wall clock is moved to the monotonic one: a preemption between the reads shifts it)
    assert before - 0.01 <= arrivals[0] and arrivals[-1] <= sent + 0.01, (before, arrivals, sent)
    assert read - arrivals[-1] >= 0.19
    assert udp_batch.recv_stamped(b, 10, native=native) == []


@pytest.mark.timeout(20)
@pytest.mark.parametrize("native", MODES)
def test_recv_stamped_without_stamps_enabled_gives_the_read_time(
    sockets: tuple[socket.socket, socket.socket], native: bool
) -> None:
    if native and not udp_batch.NATIVE:
        pytest.skip("built without a C compiler")
    a, b = sockets
    a.sendto(b"one", b.getsockname())
    time.sleep(0.1)
    before = time.monotonic()
    got = udp_batch.recv_stamped(b, 10, native=native)
    assert [(d, addr) for d, addr, _ in got] == [(b"one", a.getsockname())]
    assert before <= got[0][2] <= time.monotonic()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("native", MODES)
def test_recv_laned_offers_srtp_from_a_lane_address_and_lists_the_rest(
    native: bool, sockets: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SRTP and SRTCP (first byte 128..191) from an address with a lane go to its ``take``
    first; what it takes is counted, what it leaves is listed in order with the rest (STUN,
    DTLS, other addresses); a take that raises does not end the batch."""
    if native and not udp_batch.NATIVE:
        pytest.skip("built without a C compiler")
    a, b = sockets
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    try:
        udp_batch.enable_stamps(b)
        offered: list[bytes] = []

        def take(data: bytes) -> bool:
            offered.append(data)
            if 191 < data[1] < 224:
                return False  # RTCP: left (as an RTP lane leaves it)
            if data[2] == 3:
                raise RuntimeError("a lane failed")
            return data[2] % 2 == 0  # takes the even ones

        rtp = [bytes([0x80, 96, i]) + bytes(20) for i in range(6)]
        sent = [
            (a, rtp[0]),
            (a, b"\x00\x01" + bytes(30)),  # STUN
            (a, bytes([0x80, 200]) + bytes(20)),  # RTCP (SR)
            (a, rtp[1]),
            (a, bytes([22, 0xFE]) + bytes(20)),  # DTLS
            (other, rtp[2]),  # from another address: no lane
            (a, rtp[2]),
            (a, rtp[3]),  # raises: counted taken
            (a, bytes([0x80, 96])),  # too short for RTP
            (a, rtp[4]),
            (a, rtp[5]),
        ]
        for sock, data in sent:
            sock.sendto(data, b.getsockname())
        time.sleep(0.05)
        lanes = {a.getsockname(): take}
        unraisable: list[object] = []
        monkeypatch.setattr(sys, "unraisablehook", unraisable.append)  # the C one reports so
        left, taken = udp_batch.recv_laned(b, 100, lanes, native=native)
        assert offered == [rtp[0], sent[2][1], *rtp[1:]]
        assert taken == 4  # rtp 0, 2, 4, and 3, which raised (dropped)
        assert len(unraisable) == (1 if native else 0)
        listed = [(addr, data) for data, addr, _ in left]
        expected = [(a.getsockname(), d) for s, d in sent if s is a and d not in rtp]
        expected += [(a.getsockname(), rtp[1]), (a.getsockname(), rtp[5])]
        assert sorted(listed) == sorted([*expected, (other.getsockname(), rtp[2])])
        assert [d for addr, d in listed if addr == a.getsockname()][:2] == [sent[1][1], sent[2][1]]
    finally:
        other.close()
