"""CPU per received anchor packet of the steps the C receive path took over (issue 20).

The same SRTP packets (a 720p H264 stream's FU-A fragments of ~1150 bytes, with mid,
abs-send-time and transport-cc header extensions, as browsers send them) through
``relay.rtc.rtp_reader`` both ways, interleaved so machine load hits them alike, each on a fresh
receive session (replay protection is per session):

* ``read``: decrypt + parse: pylibsrtp's ``unprotect`` + aiortc's ``RtpPacket.parse`` against
  ``_rtp_reader.c``'s one call;
* ``depayload``: aiortc's ``h264_depayload`` against the C one;
* ``statistics``: aiortc's ``StreamStatistics.add`` (the RTCP receiver report's figures)
  against ``_rtp_reader.c``'s;
* ``assemble``: ``FrameAssembler.push`` per packet (frames of 6 packets, each frame finished in
  Python either way) with the Python reorder core against ``_reassembly.c``'s;
* ``lane``: a packet's whole receive path as the node takes it without and with a C lane
  (``_rtp_reader.c``'s ``take``), on plain packets (no header extension: ffmpeg's): "steps" is
  read + statistics + NACK tracker + depayload + assemble, every step in C where built, one
  Python call each (the node adds its routing and handler layers on top), against ``take``
  with a lane registered (Python runs per frame, to finish it).

Thread CPU, best of ``--rounds``, in microseconds per packet.

    python -m bench.receive_cost [--packets 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import time

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from pylibsrtp import Policy, Session

from relay.media.nack_tracker import NackPolicy, NackTracker
from relay.media.reassembly import FrameAssembler
from relay.rtc import rtp_reader
from relay.rtc.rtp_reader import depayloader, new_rtp_reader, new_stream_statistics

EXTENSIONS = {
    1: "urn:ietf:params:rtp-hdrext:sdes:mid",
    2: "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    3: "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
}


def extensions_map() -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in EXTENSIONS.items()
            ]
        )
    )
    return m


def stream(
    key: bytes, m: HeaderExtensionsMap, count: int, *, extensions: bool = True
) -> list[bytes]:
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    out = []
    for i in range(count):
        packet = RtpPacket(
            payload_type=96, marker=int(i % 6 == 5), sequence_number=i & 0xFFFF, ssrc=0x1234
        )
        packet.timestamp = (i // 6) * 3000
        if extensions:
            packet.extensions.mid = "0"
            packet.extensions.abs_send_time = i * 977 & 0xFFFFFF
            packet.extensions.transport_sequence_number = i & 0xFFFF
        fu = 0x80 if i % 6 == 0 else 0x40 if i % 6 == 5 else 0
        packet.payload = bytes([0x7C, fu | 1]) + os.urandom(1150)
        out.append(tx.protect(packet.serialize(m)))
    return out


def receive_session(key: bytes) -> Session:
    policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)
    policy.allow_repeat_tx = True  # as aiortc's receive session
    policy.window_size = 1024
    return Session(policy)


def whole_path(session: Session, datagrams: list[bytes], *, lanes: bool) -> tuple[float, int]:
    """Thread CPU for ``datagrams`` through one receive path, and the frames out."""
    reader = new_rtp_reader(session, HeaderExtensionsMap())
    stats = new_stream_statistics(90000)
    trackers = {0x1234: NackTracker(NackPolicy())}
    tracker = trackers[0x1234]
    asm = FrameAssembler("video", "H264")
    unpack = depayloader("H264")
    assert unpack is not None
    frames = 0

    def handler(out: object, *_: object) -> None:
        nonlocal frames
        if out is not None:
            frames += len(asm.finish(out).frames)  # type: ignore[arg-type]

    first = reader.read(datagrams[0])  # aiortc's way for the first (the lane comes after it)
    assert first is not None
    stats.add(first)
    tracker.packet(first.sequence_number, 0.0)
    data = unpack(first.payload)
    asm.push(first.sequence_number, first.timestamp, first.marker, first.payload, data, 0.0)
    if lanes:
        assert reader.lane_add(0x1234, 96, 1, stats, asm.core.push, trackers, tracker, handler)
    start = time.thread_time()
    for data in datagrams[1:]:
        if lanes:
            reader.take(data)
            continue
        p = reader.read(data)
        assert p is not None
        stats.add(p)
        tracker.packet(p.sequence_number, 0.0)
        frames += len(
            asm.push(
                p.sequence_number, p.timestamp, p.marker, p.payload, unpack(p.payload), 0.0
            ).frames
        )
        tracker.played(asm.next_sequence or 0)
    reader.flush()
    return time.thread_time() - start, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not rtp_reader.NATIVE:
        raise SystemExit("the C reader is not built (scripts/bootstrap)")
    key = os.urandom(30)
    m = extensions_map()
    datagrams = stream(key, m, args.packets)
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for way, native in (("python", False), ("C", True)):
            reader = new_rtp_reader(receive_session(key), m, native=native)
            start = time.thread_time()
            packets = [reader.read(d) for d in datagrams]
            took = time.thread_time() - start
            assert all(p is not None for p in packets)
            name = f"read ({way})"
            best[name] = min(best.get(name, float("inf")), took / len(datagrams))
            unpack = depayloader("H264", native=native)
            assert unpack is not None
            payloads = [p.payload for p in packets if p is not None]
            start = time.thread_time()
            for payload in payloads:
                unpack(payload)
            took = time.thread_time() - start
            name = f"depayload ({way})"
            best[name] = min(best.get(name, float("inf")), took / len(payloads))
            stats = new_stream_statistics(90000, native=native)
            start = time.thread_time()
            for p in packets:
                stats.add(p)
            took = time.thread_time() - start
            name = f"statistics ({way})"
            best[name] = min(best.get(name, float("inf")), took / len(packets))
            asm = FrameAssembler("video", "H264", native=native)
            pushed = [
                (p.sequence_number, p.timestamp, p.marker, p.payload, unpack(p.payload))
                for p in packets
                if p is not None
            ]
            frames = 0
            start = time.thread_time()
            for seq, ts, marker, payload, data in pushed:
                frames += len(asm.push(seq, ts, marker, payload, data, 0.0).frames)
            took = time.thread_time() - start
            assert frames == len(pushed) // 6, frames
            name = f"assemble ({way})"
            best[name] = min(best.get(name, float("inf")), took / len(pushed))
    plain = stream(key, HeaderExtensionsMap(), args.packets, extensions=False)
    for _ in range(args.rounds):
        for way, lanes in (("steps", False), ("C lane", True)):
            took, frames = whole_path(receive_session(key), plain, lanes=lanes)
            assert frames == len(plain) // 6, frames
            name = f"lane ({way})"
            best[name] = min(best.get(name, float("inf")), took / len(plain))
    for name, seconds in sorted(best.items()):
        print(f"{name}: {seconds * 1e6:.2f} us per packet (best of {args.rounds})")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
