"""Where one WHEP join's CPU goes on the node, step by step, without HTTP and without media.

The node side is a real ``ViewerService`` (the code ``POST /whep`` runs, minus the HTTP stack)
on this thread's event loop, in front of a hub that carries H264 + Opus; the viewers are real
aiortc peers on ANOTHER thread's loop, so this thread's CPU clock (``time.thread_time``) counts
the node's work only, whatever else the machine runs. Per join:

- ``open``: ``ViewerService.open`` (peer connection, certificate, transceivers, SDP parse and
  checks, ICE gathering, answer);
- ``connect``: from the answer until the node's peer connection is connected (ICE checks, the
  DTLS handshake, SRTP keys, session wiring);
- ``close``: ``ViewerService.close`` (DELETE).

Modes run interleaved, join by join: ``shared`` (the node's one UDP port, ICE-lite, the node's
certificate: as served by default), ``per-peer`` (``udp_port`` 0: sockets and gathering per
peer connection) and ``fresh`` (per-peer, and a fresh certificate per join: aiortc's own way).
``released`` is ``shared`` with the node's idle code pages released just before each join
(``relay.ops.code_pages``, which a node does at most every 30 s): the worst case of the faults
that bring the join's native code back.
``--cprofile FILE`` profiles the node's side (this thread only, timed by its CPU clock) of the
``shared`` joins and prints where a join's CPU goes, in ms per join.
Micro-timings of some pieces (certificate, fingerprints, host addresses, SDP parse, the receive
estimator a sendonly transceiver still gets) follow; the OpenSSL context per handshake is in the
difference between the two modes.

    python -m bench.join_parts --joins 40
    python -m bench.join_parts --joins 100 --modes shared --cprofile /tmp/joins.prof
    python -m bench.join_parts --joins 40 --modes shared,released
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from aiortc import RTCPeerConnection, RTCSessionDescription

from gateway.launcher import free_udp_port
from relay.auth.access import Grant
from relay.media.frames import CodecSpec, MediaKind
from relay.media.hub import FanoutHub
from relay.media.stream_key import StreamKey
from relay.ops import code_pages
from relay.rtc.certificates import RotatingCertificate
from relay.rtc.peer import close_quietly, rtc_configuration
from relay.rtc.sdp import check_offer
from relay.rtc.transport import NodeTransport, TransportConfig
from relay.rtc.viewers import ViewerService

T = TypeVar("T")
CODECS: dict[MediaKind, CodecSpec] = {
    "video": CodecSpec("video", "H264", 90000, (("packetization-mode", "1"),)),
    "audio": CodecSpec("audio", "opus", 48000),
}
GRANT = Grant("bench", "", time.time() + 3600, anonymous=True)


class ClientLoop:
    """The viewers' own event loop on a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return asyncio.wrap_future(future)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(rtc_configuration(()))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def answer(pc: RTCPeerConnection, sdp: str) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))


async def join(service: ViewerService, client: ClientLoop) -> dict[str, float]:
    pc, sdp = await client.run(offer())
    times: dict[str, float] = {}
    t = time.thread_time()
    session = await service.open(StreamKey("bench"), sdp, check_offer(sdp, "view"), GRANT)
    times["open"] = time.thread_time() - t
    connected = asyncio.Event()

    @session.pc.on("connectionstatechange")
    def _changed() -> None:
        if session.pc.connectionState in ("connected", "failed", "closed"):
            connected.set()

    t = time.thread_time()
    await client.run(answer(pc, session.pc.localDescription.sdp))
    await asyncio.wait_for(connected.wait(), 20)
    times["connect"] = time.thread_time() - t
    t = time.thread_time()
    await service.close("bench", session.id)
    times["close"] = time.thread_time() - t
    await client.run(close_quietly(pc))
    return times


def micro(name: str, fn: Callable[[], object], n: int = 200) -> tuple[str, float]:
    fn()
    t = time.thread_time()
    for _ in range(n):
        fn()
    return name, 1000 * (time.thread_time() - t) / n


def pieces() -> list[tuple[str, float]]:
    from aioice.ice import get_host_addresses
    from aiortc import sdp as aiortc_sdp
    from aiortc.rate import RemoteBitrateEstimator
    from aiortc.rtcdtlstransport import RTCCertificate

    plain = RTCCertificate.generateCertificate()
    text = asyncio.run(_offer_text())
    return [
        micro(
            "certificate + key (aiortc, per peer connection)", RTCCertificate.generateCertificate
        ),
        micro("fingerprints, 3 digests (aiortc, per description)", plain.getFingerprints),
        micro("host addresses (aioice, per gathering)", lambda: get_host_addresses(True, True)),
        micro("SDP parse of an offer (aiortc)", lambda: aiortc_sdp.SessionDescription.parse(text)),
        micro("receive estimator of a sendonly video transceiver", RemoteBitrateEstimator),
    ]


async def _offer_text() -> str:
    pc, sdp = await offer()
    await close_quietly(pc)
    return sdp


async def run(
    args: argparse.Namespace, profiler: cProfile.Profile | None = None
) -> dict[str, list[dict[str, float]]]:
    hub = FanoutHub(StreamKey("bench"), CODECS)
    shared = NodeTransport(TransportConfig(udp_port=free_udp_port(), addresses=("127.0.0.1",)))
    await shared.start()
    services = {
        "shared": ViewerService(lambda key, subject: hub, transport=shared),
        "released": ViewerService(lambda key, subject: hub, transport=shared),
        "per-peer": ViewerService(lambda key, subject: hub),
        "fresh": ViewerService(lambda key, subject: hub),
    }
    services["fresh"].certificate = RotatingCertificate(1e-9)  # a new one for every join
    services = {m: s for m, s in services.items() if m in args.modes.split(",")}
    client = ClientLoop()
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in services}
    try:
        for service in services.values():  # warm-up: imports, first contexts
            await join(service, client)
        for _ in range(args.joins):
            for mode, service in services.items():
                if mode == "released":
                    code_pages.release()
                if profiler is not None and mode == "shared":
                    profiler.enable()
                try:
                    results[mode].append(await join(service, client))
                finally:
                    if profiler is not None:
                        profiler.disable()
    finally:
        for service in services.values():
            await service.shutdown()
        await shared.close()
        client.stop()
    return results


def print_profile(profiler: cProfile.Profile, out: str, joins: int, top: int) -> None:
    """The functions with the most CPU per join, inclusive (cumulative) and own."""
    profiler.dump_stats(out)
    stats = pstats.Stats(out)
    rows = stats.stats  # type: ignore[attr-defined]
    for title, index in (("inclusive", 3), ("own", 2)):
        print(f"\n| node CPU per join, {title}, ms | function |\n|---|---|")
        ranked = sorted(rows.items(), key=lambda kv: kv[1][index], reverse=True)[:top]
        for (path, line, name), row in ranked:
            short = "/".join(path.split("/")[-2:])
            print(f"| {1000 * row[index] / joins:.3f} | {name} ({short}:{line}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--joins", type=int, default=40)
    parser.add_argument("--modes", default="shared,per-peer,fresh", help="and released")
    parser.add_argument("--cprofile", default="", help="profile the shared joins to this file")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    profiler = cProfile.Profile(time.thread_time) if args.cprofile else None
    results = asyncio.run(run(args, profiler))
    print("| node CPU per join, ms (median / p90) | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for step in ("open", "connect", "close"):
        cells = []
        for rows in results.values():
            values = sorted(1000 * r[step] for r in rows)
            p90 = values[int(0.9 * (len(values) - 1))]
            cells.append(f"{statistics.median(values):.2f} / {p90:.2f}")
        print(f"| {step} | " + " | ".join(cells) + " |")
    totals = [
        statistics.median(1000 * (r["open"] + r["connect"]) for r in rows)
        for rows in results.values()
    ]
    print("| open + connect | " + " | ".join(f"{t:.2f}" for t in totals) + " |")
    print("\n| piece | ms |\n|---|---|")
    for name, ms in pieces():
        print(f"| {name} | {ms:.3f} |")
    if profiler is not None:
        print_profile(profiler, args.cprofile, args.joins, args.top)


if __name__ == "__main__":
    main()
