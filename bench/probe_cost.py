"""CPU of probing a viewer's link (relay/media/probe.py, relay/rtc/probe_sender.py), per packet and
per cluster, thread CPU (a loaded machine preempts the thread, not its CPU count).

One probe packet is what ``DirectSender.resend`` does: the RTX packet built from the history
(``RtpRewriter.retransmission``), numbered for transport-cc, recorded in the estimator,
encrypted (pylibsrtp) and sent to a loopback socket. A cluster is 0.1 s at 1.2 x the next
layer's rate on top of the layer sent: 180p (264 kbit/s) -> 360p (564), 360p -> 720p (1600).
Also the estimator's feedback with every packet in a cluster against none (the tagging's cost).

    python -m bench.probe_cost [--packets 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import time

from pylibsrtp import Policy, Session

from bench.send_cost import PROFILE, frame
from relay.media.cc_feedback import build_transport_feedback
from relay.media.estimator import BandwidthEstimator
from relay.media.probe import ProbeConfig
from relay.rtc.rtp_rewrite import RtpRewriter, SendProfile, TemplateCache, extension_offset

RTX = SendProfile(PROFILE.payload_type, PROFILE.mid, PROFILE.extensions, rtx_payload_type=103)


def per_packet(packets: int) -> float:
    """us of thread CPU per probe packet (~1100 bytes)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    session = Session(Policy(key=bytes(range(30)), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    cache = TemplateCache(lambda: 0)
    tid = cache.template_id(RTX)
    rewriter = RtpRewriter(1234, RTX, rtx_ssrc=5678)
    estimator = BandwidthEstimator()
    templates = cache.packets(frame(0), RTX, tid).templates
    offset = extension_offset(templates[0], 4) or 0
    for i in range(64):
        f = frame(i)
        rewriter.assign(cache.packets(f, RTX, tid).templates, f.timestamp, f.keyframe)
    addr = rx.getsockname()
    spent = 0.0
    done = 0
    while done < packets:
        recent = rewriter.recent(24)
        t0 = time.thread_time()
        for sequence, size in recent:
            now = time.monotonic()
            seq = estimator.record((size + 2,), now)
            packet = rewriter.retransmission(sequence, seq, offset)
            assert packet is not None
            with contextlib.suppress(BlockingIOError):
                tx.sendto(session.protect(packet), addr)
            estimator.sent(len(packet), now)
        spent += time.thread_time() - t0
        done += len(recent)
        try:
            while True:
                rx.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
    rx.close()
    tx.close()
    return spent / done * 1e6


def feedback(tagged: bool, seconds: int = 10) -> float:
    """ms of thread CPU per viewer-second taking feedback for a 1.5 Mbps stream, every packet
    in a probe cluster or none (best of 5)."""
    best = float("inf")
    for _ in range(5):
        est = BandwidthEstimator()
        if tagged:
            est.begin_probe(1, 0.0)
        spent = 0.0
        pending: list[float] = []
        first = 0
        for step in range(seconds * 100):
            now = step / 100
            if step % 3 == 0:
                first_new = est.record((1100,) * 5, now)
                del first_new
                pending += [now + 0.02] * 5
            if step % 10 == 0 and pending:
                fci = build_transport_feedback(first & 0xFFFF, pending)[12:]
                t0 = time.thread_time()
                est.on_transport_feedback(fci, now + 0.04)
                spent += time.thread_time() - t0
                first += len(pending)
                pending = []
        best = min(best, spent)
    return best / seconds * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000)
    args = parser.parse_args(argv)
    us = per_packet(args.packets)
    c = ProbeConfig()
    print(f"probe packet (RTX, ~1100 B): {us:.1f} us thread CPU")
    for name, media, nxt in (("180p->360p", 264_000, 564_000), ("360p->720p", 564_000, 1_600_000)):
        probe_bytes = (c.margin * nxt - media) * c.duration / 8
        n = probe_bytes / 1100
        ms = n * us / 1000
        print(f"cluster {name}: {probe_bytes / 1000:.1f} kB, ~{n:.0f} packets, {ms:.2f} ms")
    plain, tagged = feedback(False), feedback(True)
    print(f"feedback per viewer-second: {plain:.3f} ms, every packet in a cluster {tagged:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
