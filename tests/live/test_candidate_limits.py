"""Remote ICE candidates cannot turn a node into an amplifier: a session keeps a bounded number of
candidate addresses (offer and trickle together), addresses the node must never contact are
dropped, and the STUN checks the node sends are counted at a socket the test owns."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from aioice import stun

from gateway.synthetic import StampedVideoTrack, whip_publish
from tests.live.test_protocol import SDP, make_offer
from tests.support.server import RunningServer, run_server

TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python 3.11 lacks the name
STUN_MAGIC = b"\x21\x12\xa4\x42"


# The checks counted here are a full ICE agent's: per-peer ports (udp_port 0). On the node's one
# UDP port it is ICE-lite and sends no check at all (tests/live/test_shared_port.py).
PER_PEER = {"udp_port": 0}


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with run_server(webrtc=PER_PEER, limits={"max_loop_lag": None}) as srv:  # no 503 under load
        yield srv


def cand(host: str, port: int, *, foundation: int = 1) -> str:
    return f"{foundation} 1 udp 2130706431 {host} {port} typ host"


class StunSink:
    """A UDP socket on every loopback address (0.0.0.0, port ``port``) that counts the STUN
    binding requests it receives, by destination address (IP_PKTINFO)."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.requests: Counter[str] = Counter()
        self.first: dict[str, float] = {}  # destination -> when its first request arrived
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(2048, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 20 or data[:2] != b"\x00\x01" or data[4:8] != STUN_MAGIC:
                continue
            dest = "?"
            for level, kind, payload in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(payload) >= 12:
                    dest = socket.inet_ntoa(payload[8:12])
            self.requests[dest] += 1
            self.first.setdefault(dest, time.monotonic())

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@contextmanager
def stun_sink(host: str = "0.0.0.0", port: int = 0) -> Iterator[StunSink]:
    sink = StunSink(host, port)
    try:
        yield sink
    finally:
        sink.close()


def loopback_address(i: int) -> str:
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def with_candidates(offer: str, values: list[str]) -> str:
    """The offer without its own candidates, and ``values`` in its first media section."""
    lines = [
        line
        for line in offer.splitlines()
        if not line.startswith(("a=candidate:", "a=end-of-candidates"))
    ]
    at = next(i for i, line in enumerate(lines) if line.startswith("a=mid:")) + 1
    lines[at:at] = [f"a=candidate:{v}" for v in values]
    return "\r\n".join(lines) + "\r\n"


async def live_room(server: RunningServer, room: str):  # type: ignore[no-untyped-def]
    return await whip_publish(
        server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(160, 90, 15)
    )


@pytest.mark.timeout(60)
async def test_whep_offer_with_700_candidates_contacts_a_bounded_set(
    server: RunningServer,
) -> None:
    room = "amplify"
    pub = await live_room(server, room)
    port = int(server.base_url.rsplit(":", 1)[1])
    with stun_sink() as sink, stun_sink("127.0.0.1", port) as own_port:
        values = [cand(loopback_address(i), sink.port, foundation=i) for i in range(700)]
        values.insert(0, cand("127.0.0.1", port, foundation=999))  # the node's HTTP port
        offer = with_candidates(await make_offer("recvonly"), values)
        assert len(offer) < 64 * 1024
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            resp = await c.post(f"/whep/{room}", content=offer, headers=SDP)
            assert resp.status_code == 201, resp.text
            await asyncio.sleep(6.0)
            await c.delete(resp.headers["location"])
        contacted = len(sink.requests)
        total = sink.total
        assert own_port.total == 0, own_port.requests
    await pub.close()
    limit = server.settings.limits.max_remote_candidates
    assert 0 < contacted <= limit, (contacted, total)
    assert total <= limit * 7, total  # aioice sends a check at most 7 times


@pytest.mark.timeout(60)
async def test_trickled_candidates_share_the_session_limit(server: RunningServer) -> None:
    room = "amplify-trickle"
    pub = await live_room(server, room)
    limit = server.settings.limits.max_remote_candidates
    with stun_sink() as sink:
        offer = with_candidates(await make_offer("recvonly"), [])
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            resp = await c.post(f"/whep/{room}", content=offer, headers=SDP)
            assert resp.status_code == 201, resp.text
            url, etag = resp.headers["location"], resp.headers["etag"]
            headers = {**TRICKLE, "If-Match": etag}
            statuses = []
            for batch in range(6):  # 120 candidates in fragments of 20
                frag = "a=mid:0\r\n" + "".join(
                    f"a=candidate:{cand(loopback_address(batch * 20 + i), sink.port)}\r\n"
                    for i in range(20)
                )
                statuses.append((await c.patch(url, content=frag, headers=headers)).status_code)
            # one repeated candidate, many times: ignored, the session's state does not grow
            again = f"a=mid:0\r\na=candidate:{cand(loopback_address(0), sink.port)}\r\n"
            for _ in range(20):
                assert (await c.patch(url, content=again, headers=headers)).status_code == 204
            session = next(iter(server.gateway.viewers.sessions.values()))
            lines = server.call(lambda: session.pc.remoteDescription.sdp.count("a=candidate:"))
            await asyncio.sleep(3.0)
            await c.delete(url)
    await pub.close()
    assert statuses[: limit // 20] == [204] * (limit // 20)
    assert statuses[-1] == 422  # a PATCH whose every new candidate is beyond the limit
    assert lines == limit
    assert 0 < len(sink.requests) <= limit


@pytest.mark.timeout(60)
async def test_whip_offer_is_screened_too() -> None:
    with run_server(limits={"max_remote_candidates": 4}, webrtc=PER_PEER) as server:
        room = "amplify-whip"
        port = int(server.base_url.rsplit(":", 1)[1])
        with stun_sink() as sink, stun_sink("127.0.0.1", port) as own_port:
            values = [cand(loopback_address(i), sink.port, foundation=i) for i in range(40)]
            values.insert(0, cand("127.0.0.1", port, foundation=77))  # the node's HTTP port
            offer = with_candidates(await make_offer("sendonly"), values)
            auth = {"Authorization": f"Bearer {server.anchor_token(room)}"}
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
                resp = await c.post(
                    f"/whip/{room}",
                    content=offer,
                    headers={**SDP, **auth},
                )
                assert resp.status_code == 201, resp.text
                await asyncio.sleep(3.0)
                await c.delete(resp.headers["location"], headers=auth)
                assert own_port.total == 0, own_port.requests
            assert 0 < len(sink.requests) <= 4
            assert set(sink.requests) <= {loopback_address(i) for i in range(4)}


@pytest.mark.timeout(60)
async def test_checks_to_new_candidates_are_paced(server: RunningServer) -> None:
    """Ordinary checks start one per CandidatePolicy.check_interval (RFC 8445's Ta), not
    aioice's 20 ms: a session's checks cannot burst at an address range."""
    room = "amplify-pace"
    pub = await live_room(server, room)
    interval = server.gateway.viewers.limits.candidates.check_interval
    count = server.settings.limits.max_remote_candidates
    with stun_sink() as sink:
        values = [cand(loopback_address(i), sink.port, foundation=i) for i in range(count)]
        offer = with_candidates(await make_offer("recvonly"), values)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            resp = await c.post(f"/whep/{room}", content=offer, headers=SDP)
            assert resp.status_code == 201, resp.text
            await asyncio.sleep(count * interval + 1.0)
            await c.delete(resp.headers["location"])
        firsts = sorted(sink.first.values())
    await pub.close()
    assert len(firsts) == count
    span = firsts[-1] - firsts[0]
    assert span >= (count - 1) * interval * 0.8, span


def ice_params(sdp: str) -> tuple[str, str]:
    ufrag = next(x.split(":", 1)[1] for x in sdp.splitlines() if x.startswith("a=ice-ufrag:"))
    pwd = next(x.split(":", 1)[1] for x in sdp.splitlines() if x.startswith("a=ice-pwd:"))
    return ufrag.strip(), pwd.strip()


def binding_request(server_ufrag: str, server_pwd: str, client_ufrag: str) -> bytes:
    """An authenticated ICE check from the controlling side (the offerer)."""
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{server_ufrag}:{client_ufrag}"
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 1
    message.add_message_integrity(server_pwd.encode())
    message.add_fingerprint()
    return bytes(message)


@pytest.mark.timeout(60)
async def test_checks_from_many_source_addresses_teach_a_bounded_set(
    server: RunningServer,
) -> None:
    """Authenticated checks from 100 source addresses (as a spoofer would send them): the node
    learns (and sends triggered checks to) at most the session's limit of peer-reflexive ones."""
    room = "amplify-prflx"
    pub = await live_room(server, room)
    limit = server.settings.limits.max_remote_candidates
    offer = with_candidates(await make_offer("recvonly"), [])
    client_ufrag, _ = ice_params(offer)
    sources: list[socket.socket] = []
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
            resp = await c.post(f"/whep/{room}", content=offer, headers=SDP)
            assert resp.status_code == 201, resp.text
            answer = resp.text
            ufrag, pwd = ice_params(answer)
            target = next(
                (f[4], int(f[5]))
                for f in (x.split() for x in answer.splitlines() if x.startswith("a=candidate:"))
                if f[2].lower() == "udp" and ":" not in f[4]
            )
            for i in range(100):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sources.append(sock)
                sock.bind((loopback_address(i), 0))
                sock.setblocking(False)
                sock.sendto(binding_request(ufrag, pwd, client_ufrag), target)
            checked = set()
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                for i, sock in enumerate(sources):
                    while True:
                        try:
                            data = sock.recv(2048)
                        except BlockingIOError:
                            break
                        if data[:2] == b"\x00\x01":  # a binding request: a triggered check
                            checked.add(i)
            await c.delete(resp.headers["location"])
    finally:
        for sock in sources:
            sock.close()
    await pub.close()
    assert 0 < len(checked) <= limit, len(checked)
