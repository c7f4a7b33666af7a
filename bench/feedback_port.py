"""What a viewer's transport-cc feedback datagram costs the node from the socket to the
estimator: through the shared port's read callback (``_SessionSink`` -> ``_receive_feedback``
-> the session's ``on_transport_feedback``) or through its feedback lane (the port's recvmmsg
loop -> ``RtcpReader.take`` -> the C ``TwccState``), the variants interleaved.

A sender process on CPU 1 plays ``--viewers`` peers, each sending SRTCP-protected transport-cc
feedback every 50 ms (``--spread``: each at its own phase, as Chromium viewers' are; else all at
once, as ``bench.load_viewers`` sends it); the node side (run it pinned: ``taskset -c 0``) is a
real ``SharedUdpPort`` and real session sinks, SRTCP sessions and estimators. Only the DTLS
transport and the ICE connection are stand-ins holding what these paths read of aiortc's (no
handshake: the keys are given). Per variant: datagrams a second, the node process's CPU per
datagram, and the share the lane took.

    taskset -c 0 python -m bench.feedback_port --viewers 100 --rounds 3 [--spread]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import socket
import time

from aioice import stun
from pylibsrtp import Policy, Session

from bench.port_pacing import window
from relay.media.cc_feedback import build_transport_feedback
from relay.media.estimator import BandwidthEstimator
from relay.rtc.adapter import FeedbackLane, bench_feedback_session
from relay.rtc.shared_port import SharedUdpPort

PASSWORD = "p" * 22
INTERVAL = 0.05  # s between one viewer's feedbacks
KEY = bytes(range(30))


def send(port: int, spread: bool, seconds: float, viewers: int) -> None:
    with contextlib.suppress(OSError):  # off the node's core (inherited: taskset -c 0)
        os.sched_setaffinity(0, {1})
    socks, sessions = [], []
    for i in range(viewers):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        sessions.append(Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND)))
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = f"v{i:07d}:peer"
        check.add_message_integrity(PASSWORD.encode())
        s.sendto(bytes(check), ("127.0.0.1", port))
    time.sleep(0.5)
    rng = random.Random(1)
    seqs = [0] * viewers
    t0 = time.monotonic()
    step = INTERVAL / viewers if spread else INTERVAL
    k = 0
    while time.monotonic() < t0 + seconds:
        for i in (k % viewers,) if spread else range(viewers):
            n = rng.randrange(8, 20)  # a 50 ms share of a 1.5 Mbps stream and its audio
            arrivals = [0.001 * j for j in range(n)]
            socks[i].sendto(
                sessions[i].protect_rtcp(build_transport_feedback(seqs[i], arrivals)),
                ("127.0.0.1", port),
            )
            seqs[i] = (seqs[i] + n) & 0xFFFF
        k += 1
        time.sleep(max(0.0, t0 + k * step - time.monotonic()))
    for s in socks:
        s.close()


def viewer(port: SharedUdpPort, ufrag: str, lane: bool) -> BandwidthEstimator:
    """One viewer session's receive side on ``port``, as ``ViewerService`` wires it."""
    estimator = BandwidthEstimator()

    def on_feedback(fcis: tuple[bytes, ...]) -> None:  # ViewerSession.on_transport_feedback
        now = time.monotonic()
        for fci in fcis:
            estimator.on_transport_feedback(fci, now)

    state = estimator.lane()
    bench_feedback_session(
        port,
        ufrag,
        PASSWORD,
        Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND)),
        on_feedback,
        FeedbackLane(*state, lambda n: None) if lane and state is not None else None,
    )
    return estimator


async def measure(lane: bool, spread: bool, viewers: int, seconds: float) -> dict[str, float]:
    port = SharedUdpPort()
    await port.open("127.0.0.1", 0)
    estimators = [viewer(port, f"v{i:07d}", lane) for i in range(viewers)]
    sender = multiprocessing.Process(target=send, args=(port.port, spread, seconds + 3, viewers))
    # settled: the STUN checks, then each session's first feedback
    cpu, elapsed, (got, laned) = await window(
        port, sender, 2.0, seconds, lambda: (port.received, port.laned)
    )
    assert sum(e.feedbacks for e in estimators) > 0
    return {
        "datagrams/s": got / elapsed,
        "us/datagram": 1e6 * cpu / max(got, 1),
        "laned": laned / max(got, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="the variants interleaved")
    parser.add_argument("--spread", action="store_true", help="each viewer at its own phase")
    args = parser.parse_args()
    import uvloop

    print(f"{args.viewers} viewers, a feedback each every {INTERVAL * 1e3:.0f} ms")
    print("| path | datagrams/s | node us/datagram | taken by the lane | load |")
    print("|---|---|---|---|---|")
    for _ in range(args.rounds):
        for lane in (False, True):
            r = uvloop.run(measure(lane, args.spread, args.viewers, args.seconds))
            print(
                f"| {'lane' if lane else 'read callback'} | {r['datagrams/s']:.0f} "
                f"| {r['us/datagram']:.1f} | {100 * r['laned']:.0f} % "
                f"| {os.getloadavg()[0]:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
