"""ICE-TCP on one TCP port (issue 16): RFC 6544 passive candidates beside the shared UDP port,
RFC 4571 framing, real peers on loopback. aiortc cannot do ICE-TCP, so the real peer is a
Chromium whose UDP is switched off (``--webrtc-ip-handling-policy=disable_non_proxied_udp``:
its offer carries no candidate at all, and it can only reach the answer's TCP one); a raw TCP
socket speaks the framing by hand for the protocol and the bad-input checks."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import shutil
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import imageio_ffmpeg
import pytest
from aioice import stun

from gateway.launcher import free_port
from gateway.synthetic import whep_watch
from relay.media.framing import FrameDecoder, encode_frame
from relay.rtc.tcp_port import SharedTcpPort, TcpStream
from tests.live.test_ffmpeg_whip import ffmpeg_process, stderr_tail, wait_for
from tests.live.test_shared_port import (
    binding_request,
    ice_credentials,
    publish,
    shared_port_server,
)
from tests.support.ffmpeg_whip import whip_push_argv
from tests.support.server import RunningServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_MISSING = importlib.util.find_spec("playwright") is None or not os.path.exists(CHROMIUM)
NO_UDP = "--webrtc-ip-handling-policy=disable_non_proxied_udp"


@contextlib.contextmanager
def ice_tcp_server(**overrides: Any) -> Iterator[RunningServer]:
    with shared_port_server(webrtc={"tcp_port": free_port()}, **overrides) as server:
        yield server


def tcp_port(server: RunningServer) -> int:
    port = server.gateway.transport.tcp_port
    assert port is not None
    return port


def tcp_counters(server: RunningServer) -> dict[str, int]:
    def read() -> dict[str, int]:
        tcp = server.gateway.transport.tcp
        assert tcp is not None
        names = ("pending", "attached", "refused", "garbage", "timeouts", "errors")
        return {n: getattr(tcp, n) for n in names} | {"streams": len(tcp.streams)}

    counters: dict[str, int] = server.call(read)
    return counters


class RawTcp:
    """A TCP client on loopback that frames (or mangles) by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.frames: list[bytes] = []
        self.addr = writer.get_extra_info("sockname")[:2]

    @classmethod
    async def connect(cls, port: int) -> RawTcp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float) -> bytes | None:
        """The next frame from the node (None: none in time, or the node closed the stream)."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except (TimeoutError, ConnectionError):
                return None
            if not data:
                return None
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    async def closed_by_node(self, timeout: float) -> bytes | None:
        """What the node sent before closing the stream within ``timeout`` (None: still open)."""
        got = b""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return None
            except ConnectionError:
                return got
            if not data:
                return got
            got += data
        return None

    def close(self) -> None:
        self.writer.close()


async def check_over_tcp(raw: RawTcp, request: stun.Message, timeout: float = 3.0) -> Any:
    raw.send(encode_frame(bytes(request)))
    await raw.writer.drain()
    while True:
        data = await raw.frame(timeout)
        if data is None:
            return None
        with contextlib.suppress(ValueError):
            answer = stun.parse_message(data)
            if answer.transaction_id == request.transaction_id:
                return answer


def tcp_candidates(sdp: str) -> list[str]:
    return [x for x in sdp.splitlines() if x.startswith("a=candidate") and " tcp " in x]


@pytest.mark.timeout(90)
async def test_framed_binding_request_joins_its_session_and_strangers_are_closed() -> None:
    """The answer offers a passive TCP candidate (ranked below UDP); a framed Binding request
    with a session's credentials is answered on the same stream, signed with that session's
    password; a first frame that is not one (garbage, unknown ufrag, wrong integrity, a length
    no request has) or that never completes gets the stream closed with nothing sent, and the
    session's own streams close when it ends."""
    with ice_tcp_server() as server:
        port = tcp_port(server)
        room = "tcp-proto"
        anchor = await publish(server, room)
        strangers: list[RawTcp] = []
        try:
            assert await wait_for(lambda: server.gateway.stages.live_hub(room) is not None, 10)
            viewer = await whep_watch(server.base_url, room, decode=False)
            answer = viewer.pc.remoteDescription.sdp
            (candidate,) = set(tcp_candidates(answer))  # the same in each bundled m-line
            assert f" 127.0.0.1 {port} typ host tcptype passive" in candidate
            udp = [x for x in answer.splitlines() if x.startswith("a=candidate") and " udp " in x]
            assert udp and int(candidate.split()[3]) < min(int(x.split()[3]) for x in udp)
            ufrag, pwd = ice_credentials(answer)
            remote = ice_credentials(viewer.pc.localDescription.sdp)[0]

            joined = await RawTcp.connect(port)
            got = await check_over_tcp(joined, binding_request(ufrag, pwd, remote=remote))
            assert got is not None and got.message_class == stun.Class.RESPONSE
            assert got.check_message_integrity(pwd.encode())
            assert got.attributes["XOR-MAPPED-ADDRESS"] == joined.addr
            again = await check_over_tcp(joined, binding_request(ufrag, pwd, remote=remote))
            assert again is not None  # the stream stays the session's
            assert tcp_counters(server)["attached"] == 1

            before = tcp_counters(server)
            bad_first_frames = [
                encode_frame(os.urandom(120)),  # not STUN
                encode_frame(bytes(binding_request("nobody", pwd))),  # unknown ufrag
                encode_frame(bytes(binding_request(ufrag, "w" * 22))),  # wrong integrity
                b"\xff\xff" + os.urandom(100),  # a length no Binding request has
                b"\x05\xdd",  # 1501, announced only
            ]
            for data in bad_first_frames:
                raw = await RawTcp.connect(port)
                strangers.append(raw)
                raw.send(data)
            for raw in strangers:
                assert await raw.closed_by_node(3.0) == b""
            slow = await RawTcp.connect(port)  # slowloris: a header and a byte, then silence
            strangers.append(slow)
            slow.send(encode_frame(bytes(binding_request(ufrag, pwd)))[:3])
            assert await slow.closed_by_node(2.0) is None  # not before the handshake timeout
            assert await slow.closed_by_node(6.0) == b""
            after = tcp_counters(server)
            assert after["garbage"] == before["garbage"] + 5
            assert after["timeouts"] == before["timeouts"] + 1
            assert after["pending"] == 0 and after["attached"] == before["attached"]
            assert viewer.video_frames > 0 and viewer.pc.connectionState == "connected"

            await viewer.close()  # the session ends: its stream is closed by the node
            assert await joined.closed_by_node(10.0) is not None
            assert await wait_for(lambda: tcp_counters(server)["streams"] == 0, 5)
        finally:
            for raw in strangers:
                raw.close()
            await anchor.close()
        assert await wait_for(lambda: len(server.gateway.transport.tcp.table) == 0, 10)  # type: ignore[union-attr]


class Recorder:
    """A session as the TCP port sees one (``StreamSession``): it keeps what its streams bring
    and answers each frame with the same bytes on the stream."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.lost = 0

    def stream_opened(self, stream: TcpStream) -> Recorder.Sink:
        return Recorder.Sink(self, stream)

    class Sink:
        def __init__(self, owner: Recorder, stream: TcpStream) -> None:
            self.owner, self.stream = owner, stream

        def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
            self.owner.frames.append(data)
            self.stream.write_frame(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.owner.lost += 1


def test_the_tcp_port_on_uvloop() -> None:
    """``stagecast serve`` runs uvloop, whose transports are not asyncio's classes: the port
    joins a stream to its session by the first frame, echoes on it, and closes a stranger."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        port = SharedTcpPort(handshake_timeout=1.0)
        await port.open("127.0.0.1", 0)
        session = Recorder()
        port.register("ufrag1", "p" * 22, session)
        try:
            raw = await RawTcp.connect(port.port)
            first = encode_frame(bytes(binding_request("ufrag1", "p" * 22)))
            raw.send(first + encode_frame(b"\x80dtls-or-srtp"))
            assert await raw.frame(3.0) == first[2:]
            assert await raw.frame(3.0) == b"\x80dtls-or-srtp"
            stranger = await RawTcp.connect(port.port)
            stranger.send(encode_frame(b"\x16" * 40))
            assert await stranger.closed_by_node(3.0) == b""
            silent = await RawTcp.connect(port.port)
            assert await silent.closed_by_node(3.0) == b""
            assert (port.attached, port.garbage, port.timeouts, port.pending) == (1, 1, 1, 0)
            raw.close()
            for _ in range(100):
                if session.lost:
                    break
                await asyncio.sleep(0.02)
            assert session.lost == 1 and len(session.frames) == 2
        finally:
            port.close()

    uvloop.run(asyncio.wait_for(main(), 20))


async def test_a_flood_of_silent_connections_cannot_lock_out_a_viewer() -> None:
    """One address keeps at most ``max_pending_per_address`` handshakes waiting (more are closed
    at accept); past ``max_pending`` in all the oldest waiting one makes room, so a viewer that
    connects after a flood still gets its session; frames shorter than any packet close the
    stream."""
    port = SharedTcpPort(handshake_timeout=5.0, max_pending=6, max_pending_per_address=4)
    await port.open("127.0.0.1", 0)
    session = Recorder()
    port.register("ufrag1", "p" * 22, session)
    silent: list[RawTcp] = []
    try:
        for _ in range(10):
            silent.append(await RawTcp.connect(port.port))
        for _ in range(100):
            if port.refused >= 6:
                break
            await asyncio.sleep(0.02)
        assert port.refused == 6 and port.pending == 4  # one address: 4 wait, 6 refused
        port.max_pending_per_address = 100  # as if the flood came from many addresses
        for _ in range(4):
            silent.append(await RawTcp.connect(port.port))
        viewer = await RawTcp.connect(port.port)
        first = encode_frame(bytes(binding_request("ufrag1", "p" * 22)))
        viewer.send(first)
        assert await viewer.frame(3.0) == first[2:]  # admitted: the oldest waiting made room
        assert port.evicted >= 2 and port.pending <= 6 and port.attached == 1
        viewer.send(encode_frame(b"") + encode_frame(b"abc"))  # shorter than any packet
        assert await viewer.closed_by_node(3.0) == b""
    finally:
        for raw in silent:
            raw.close()
        port.close()


# -- Chromium ---------------------------------------------------------------------------------
WATCH = """
async ([room]) => {
  const pc = new RTCPeerConnection({ iceServers: [] });
  window.pc = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    const check = () => pc.iceGatheringState === 'complete' && done();
    pc.addEventListener('icegatheringstatechange', check);
    check();
    setTimeout(done, 5000);
  });
  const resp = await fetch('/whep/' + room, {
    method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp,
  });
  const answer = await resp.text();
  if (resp.status === 201) await pc.setRemoteDescription({ type: 'answer', sdp: answer });
  return { status: resp.status, offer: pc.localDescription.sdp, answer };
}
"""
STATS = """
async () => {
  const stats = await window.pc.getStats();
  let frames = 0, local = null, remote = null;
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0;
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      const pair = stats.get(s.selectedCandidatePairId);
      local = stats.get(pair.localCandidateId);
      remote = stats.get(pair.remoteCandidateId);
    }
  });
  return {
    frames, state: window.pc.connectionState,
    protocol: local && local.protocol, tcpType: local && local.tcpType,
    remotePort: remote && remote.port, remoteProtocol: remote && remote.protocol,
  };
}
"""


@contextlib.asynccontextmanager
async def chromium_without_udp() -> AsyncIterator[Any]:
    if BROWSER_MISSING:
        if os.environ.get("CI"):
            raise RuntimeError("playwright or chromium missing; scripts/bootstrap installs them")
        pytest.skip("playwright or chromium missing (scripts/bootstrap)")
    playwright_api: Any = importlib.import_module("playwright.async_api")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", NO_UDP]
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args, timeout=20_000)
        try:
            yield browser
        finally:
            await browser.close()


async def watch_in(browser: Any, server: RunningServer, room: str) -> tuple[Any, dict[str, Any]]:
    page = await browser.new_page()
    await page.goto(server.base_url + "/healthz")  # same origin as the WHEP endpoint
    got: dict[str, Any] = await page.evaluate(WATCH, [room])
    assert got["status"] == 201, got
    return page, got


async def stats_when(page: Any, ok: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats: dict[str, Any] = await page.evaluate(STATS)
        if ok(stats):
            return stats
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.2)


@pytest.mark.browser
@pytest.mark.timeout(90)
async def test_chromium_without_udp_plays_over_ice_tcp() -> None:
    """Chromium with UDP off gathers nothing; given the answer's UDP and TCP candidates it
    can only take the TCP one, and plays: its selected pair is TCP, frames are decoded, and on
    the node the session's nominated pair and the viewer's direct sender use the stream."""
    with ice_tcp_server() as server:
        port, room = tcp_port(server), "tcp-play"
        anchor = await publish(server, room)
        try:
            assert await wait_for(lambda: server.gateway.stages.live_hub(room) is not None, 10)
            async with chromium_without_udp() as browser:
                page, got = await watch_in(browser, server, room)
                assert not [x for x in got["offer"].splitlines() if " udp " in x]
                assert tcp_candidates(got["answer"]) and "a=ice-lite" in got["answer"]
                stats = await stats_when(page, lambda s: s["frames"] > 10, 30)
                assert stats["protocol"] == "tcp" and stats["remoteProtocol"] == "tcp"
                assert stats["remotePort"] == port and stats["state"] == "connected"

                def server_side() -> list[tuple[str, str]]:
                    found = []
                    for session in server.gateway.viewers.sessions.values():
                        pc = session.pc
                        connection = pc.getTransceivers()[0].receiver.transport.transport
                        pair = connection._connection._nominated.get(1)
                        assert pair is not None
                        outs = [type(d._out).__name__ for d in session.senders.values()]
                        found.append((pair.local_candidate.transport, ",".join(outs)))
                    return found

                assert server.call(server_side) == [("tcp", "TcpStream,TcpStream")]
                assert tcp_counters(server)["attached"] >= 1
        finally:
            await anchor.close()


def fuzzed_streams(rng: random.Random, count: int) -> Iterator[bytes]:
    """Byte streams a TCP peer might send first: random bytes, frames of random content (some
    STUN-shaped), lengths that lie, floods of frames."""
    cookie = stun.COOKIE.to_bytes(4, "big")
    for i in range(count):
        kind = i % 6
        body = rng.randbytes(rng.randrange(0, 1400))
        if kind == 0:
            yield body
        elif kind == 1:  # one frame of a STUN header, random attributes
            head = rng.choice([b"\x00\x01", b"\x01\x01", rng.randbytes(2)])
            message = head + struct.pack("!H", len(body)) + cookie + rng.randbytes(12) + body
            yield encode_frame(message)
        elif kind == 2:  # a frame that says more than it carries, or less
            yield struct.pack("!H", rng.randrange(0, 0x10000)) + body
        elif kind == 3:  # DTLS / RTP looking frames
            yield encode_frame(bytes([rng.choice([22, 128, 144])]) + body)
        elif kind == 4:  # many small frames at once
            yield b"".join(encode_frame(rng.randbytes(rng.randrange(0, 30))) for _ in range(50))
        else:
            yield b"\xff\xff" + body  # the longest length there is


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_bad_input_on_the_tcp_port_never_disturbs_a_chromium_viewer() -> None:
    """While Chromium plays over ICE-TCP: 120 fuzzed first streams, 300 connections that send
    nothing (more than may be pending at once), huge length prefixes and a slowloris. Every bad
    connection is closed without an answer, nothing is left pending, and the viewer's frames
    keep coming on its own stream."""
    with ice_tcp_server() as server:
        port, room = tcp_port(server), "tcp-fuzz"
        anchor = await publish(server, room)
        bad: list[RawTcp] = []
        try:
            assert await wait_for(lambda: server.gateway.stages.live_hub(room) is not None, 10)
            async with chromium_without_udp() as browser:
                page, _ = await watch_in(browser, server, room)
                stats = await stats_when(page, lambda s: s["frames"] > 10, 30)
                assert stats["protocol"] == "tcp"
                attached = tcp_counters(server)["attached"]

                rng = random.Random(6544)
                for data in fuzzed_streams(rng, 120):
                    raw = await RawTcp.connect(port)
                    raw.send(data)
                    bad.append(raw)
                idle = []
                for _ in range(300):  # connect, say nothing
                    with contextlib.suppress(OSError):
                        idle.append(await RawTcp.connect(port))
                slow = await RawTcp.connect(port)
                for byte in b"\x00\x60\x00\x01":  # a byte a second: never a whole frame
                    slow.send(bytes([byte]))
                    await asyncio.sleep(1.0)
                bad += [*idle, slow]
                frames = (await page.evaluate(STATS))["frames"]
                results = await asyncio.gather(*(raw.closed_by_node(12.0) for raw in bad))
                assert all(r is not None for r in results), results.count(None)
                # nothing answered: a fuzzed first frame is never a valid Binding request
                assert all(not r for r in results)
                counters = tcp_counters(server)
                assert counters["pending"] == 0 and counters["attached"] == attached
                assert counters["refused"] > 0 and counters["timeouts"] > 0
                assert counters["garbage"] > 0

                later = await stats_when(page, lambda s: s["frames"] > frames + 60, 15)
                assert later["protocol"] == "tcp" and later["state"] == "connected"
        finally:
            for raw in bad:
                raw.close()
            await anchor.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_ffmpeg_anchor_with_a_tcp_viewer_and_a_udp_viewer() -> None:
    """ffmpeg's WHIP muxer reads the answer's first UDP candidate and must not trip over the TCP
    one; its stream reaches a Chromium without UDP over ICE-TCP and an aiortc viewer over UDP,
    all three sessions on the node's two ports at once."""
    with ice_tcp_server() as server:
        room = "tcp-ffmpeg"
        url = f"{server.base_url}/whip/{room}"
        argv = whip_push_argv(imageio_ffmpeg.get_ffmpeg_exe(), url, server.anchor_token(room), 60)
        async with ffmpeg_process(argv) as proc, chromium_without_udp() as browser:
            live = await wait_for(lambda: server.gateway.stages.live_hub(room) is not None, 15)
            assert live, await stderr_tail(proc)
            viewer = await whep_watch(server.base_url, room, decode=False)
            try:
                page, _ = await watch_in(browser, server, room)
                stats = await stats_when(page, lambda s: s["frames"] > 30, 30)
                assert stats["protocol"] == "tcp"
                assert await wait_for(lambda: viewer.video_frames > 30, 10)

                def transports() -> list[str]:
                    pcs = [s.pc for s in server.gateway.anchors.sessions.values()]
                    pcs += [s.pc for s in server.gateway.viewers.sessions.values()]
                    found = []
                    for pc in pcs:
                        ice = pc.getTransceivers()[0].receiver.transport.transport
                        pair = ice._connection._nominated.get(1)
                        found.append(pair.local_candidate.transport if pair else "none")
                    return sorted(found)

                assert server.call(transports) == ["tcp", "udp", "udp"]
            finally:
                await viewer.close()
