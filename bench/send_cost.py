"""CPU per viewer and frame of the direct send path, with and without transport-cc.

The per-viewer work ``DirectSender.send_frame`` does for a 720p 1.5 Mbps frame (numbering the
frame, encrypting and sending its packets to a loopback socket through the C loop, or the
Python one), in three variants, interleaved so machine load hits them alike:

* ``plain``: as before the estimator (``RtpRewriter.assign`` + ``SrtpWriter.send``);
* ``estimate``: + the bytes sent recorded for the estimate (what a REMB/RR viewer costs);
* ``twcc``: + transport-wide sequence numbers recorded and written into every packet;
* ``twcc, one call``: the same in the send call (``send_recorded``), as the node sends.

Then the estimator's side per viewer-second of a 1.5 Mbps stream with its audio (30 frames of
5 packets, 50 audio packets): recording what is sent, and taking the viewer's transport-cc
feedback (every 50 ms: 20 a second, as Chromium sends it at this rate) in C
(``relay/media/_twcc.c``) and in Python: thread CPU, best of 5, per feedback packet and as
core per viewer.

Then the whole server-side path of one feedback datagram, as the node runs it: the SRTCP
datagram handed to the shared port's session sink (``relay.rtc.adapter._SessionSink``), through
the receive queue and a consumer task as aiortc's DTLS transport reads it, unprotected
(libsrtp), through the consent and RTCP-tap wrappers to ``ViewerSession.on_rtcp_data`` and the
estimator. This is what a viewer's ~20
feedbacks a second cost beyond the estimator's own arithmetic (issue 17: the estimator and
selector may cost <= 10 % more CPU per viewer). Then the path that replaced it for a viewer
that negotiated transport-cc: the datagram taken in the port's read callback, decrypted and
split by ``relay/rtc/rtcp_reader.py`` (C reader, and its Python reference) and its FCI given to
``ViewerSession.on_transport_feedback`` (the sink's own test of the first header left out: a
few comparisons). Last, the feedback lane that stands in for that path: the reader bound to the
estimator's state (``take``, as the port's recvmmsg loop calls it; C, and its Python reference).

    python -m bench.send_cost [--frames 20000] [--python]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from types import SimpleNamespace
from typing import Any

from pylibsrtp import Policy, Session

from relay.media import estimator as estimator_module
from relay.media.cc_feedback import build_transport_feedback
from relay.media.estimator import BandwidthEstimator
from relay.media.frames import EncodedFrame
from relay.rtc.adapter import _SessionSink
from relay.rtc.rtcp_reader import new_rtcp_reader
from relay.rtc.rtp_rewrite import (
    RtpRewriter,
    SendProfile,
    TemplateCache,
    extension_offset,
)
from relay.rtc.srtp_writer import new_srtp_writer
from relay.rtc.viewers import ViewerSession

TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
PROFILE = SendProfile(
    payload_type=102,
    mid="1",
    extensions=(
        ("urn:ietf:params:rtp-hdrext:sdes:mid", 1),
        ("http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time", 3),
        (TWCC_URI, 4),
    ),
)


def frame(i: int) -> EncodedFrame:
    payloads = tuple(bytes([i % 256]) * 1100 for _ in range(6))  # ~1.5 Mbps at 30 fps
    return EncodedFrame("video", "H264", i * 3000, payloads, b"", i % 60 == 0, float(i))


def run(frames: int, native: bool) -> dict[str, float]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    session = Session(Policy(key=bytes(range(30)), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    writer = new_srtp_writer(session, tx, rx.getsockname(), native=native)
    cache = TemplateCache(lambda: 0)
    tid = cache.template_id(PROFILE)
    rewriter = RtpRewriter(1234, PROFILE)
    estimator = BandwidthEstimator()
    offset = extension_offset(cache.packets(frame(0), PROFILE, tid).templates[0], 4) or 0
    writer.record_into(estimator.send_log)
    spent = {"plain": 0.0, "estimate": 0.0, "twcc": 0.0, "twcc, one call": 0.0}
    clock = time.thread_time  # CPU of this thread: a loaded machine preempts it
    for i in range(frames):
        f = frame(i)
        packets = cache.packets(f, PROFILE, tid)
        variants = list(spent)
        shift = i % len(variants)  # each variant first in turn: the first runs with colder caches
        for variant in variants[shift:] + variants[:shift]:
            t0 = clock()
            seq, ts = rewriter.assign(packets.templates, f.timestamp, f.keyframe)
            if variant == "twcc":
                now = time.monotonic()
                first = estimator.record(packets.sizes, now)
                with contextlib.suppress(BlockingIOError):
                    writer.send(packets.templates, packets.runs, seq, ts, 1234, True, offset, first)
                estimator.sent(f.size, now)
            elif variant == "twcc, one call":
                now = time.monotonic()
                with contextlib.suppress(BlockingIOError):
                    writer.send_recorded(
                        packets.templates, packets.runs, seq, ts, 1234, True, offset, now, f.size
                    )
            else:
                now = time.monotonic()
                with contextlib.suppress(BlockingIOError):
                    writer.send(packets.templates, packets.runs, seq, ts, 1234, True)
                if variant == "estimate":
                    estimator.sent(f.size, now)
            spent[variant] += clock() - t0
        if i % 64 == 0:  # keep the sink's buffer from filling
            try:
                while True:
                    rx.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
    rx.close()
    tx.close()
    result = {k: v / frames * 1e6 for k, v in spent.items()}
    # the bookkeeping alone, without the send's noise (the kernel's loopback delivery)
    sizes = cache.packets(frame(1), PROFILE, tid).sizes
    t0 = clock()
    for _ in range(frames):
        now = time.monotonic()
        estimator.record(sizes, now)
        estimator.sent(9000, now)
    result["twcc bookkeeping"] = (clock() - t0) / frames * 1e6
    t0 = clock()
    for _ in range(frames):
        estimator.sent(9000, time.monotonic())
    result["estimate bookkeeping"] = (clock() - t0) / frames * 1e6
    return result


def feedback_cost(
    seconds: int = 10, native: bool = True, every: int = 5
) -> tuple[float, float, float]:
    """(ms of CPU per viewer-second recording sends, ms taking feedback, us per feedback) with
    a feedback every ``every`` 10 ms steps."""
    events: list[tuple[str, object, float]] = []
    pending: list[float | None] = []
    seq = first = 0
    for step in range(seconds * 100):  # 10 ms steps
        now = step / 100
        if step % 3 == 0:
            events.append(("send", (1100,) * 5, now))
            pending += [now + 0.02] * 5
            seq += 5
        if step % 2 == 0:
            events.append(("send", (120,), now))
            pending.append(now + 0.02)
            seq += 1
        if step % every == 0 and pending:
            fci = build_transport_feedback(first, pending)[12:]
            events.append(("feedback", fci, now + 0.04))
            first, pending = seq, []
    best_send = best_feedback = float("inf")
    feedbacks = sum(kind == "feedback" for kind, _, _ in events)
    for _ in range(5):
        estimator = BandwidthEstimator(native=native)
        send = feedback = 0.0
        for kind, data, now in events:
            t0 = time.thread_time()
            if kind == "send":
                assert isinstance(data, tuple)
                estimator.record(data, now)
                estimator.sent(sum(data), now)
                send += time.thread_time() - t0
            else:
                assert isinstance(data, bytes)
                estimator.on_transport_feedback(data, now)
                feedback += time.thread_time() - t0
        assert estimator.unknown == 0 and estimator.malformed == 0
        best_send, best_feedback = min(best_send, send), min(best_feedback, feedback)
    return best_send / seconds * 1e3, best_feedback / seconds * 1e3, best_feedback / feedbacks * 1e6


def feedback_trace(seconds: int, every: int = 5) -> list[tuple[str, Any, float]]:
    """A viewer-second's sends (30 video frames of 5 packets, 50 audio packets) and its
    transport-cc feedback every ``every`` 10 ms steps (whole RTCP packets), ``seconds`` long."""
    events: list[tuple[str, Any, float]] = []
    pending: list[float | None] = []
    seq = first = 0
    for step in range(seconds * 100):
        now = step / 100
        if step % 3 == 0:
            events.append(("send", (1100,) * 5, now))
            pending += [now + 0.02] * 5
            seq += 5
        if step % 2 == 0:
            events.append(("send", (120,), now))
            pending.append(now + 0.02)
            seq += 1
        if step % every == 0 and pending:
            events.append(("feedback", build_transport_feedback(first, pending), now + 0.04))
            first, pending = seq, []
    return events


async def receive_path_cost(seconds: int = 20, rounds: int = 5) -> float:
    """Thread CPU (us) per feedback datagram from the session sink to the estimator, best of
    ``rounds``, less the loop turns with nothing delivered."""
    key = bytes(range(30))
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    events = feedback_trace(seconds)
    # the trace is replayed faster than real time: its feedbacks must not be refused as a
    # flood (the check itself still runs)
    estimator_module.FEEDBACK_RATE = 1e9
    protected = [
        (kind, tx.protect_rtcp(data) if kind == "feedback" else data, now)
        for kind, data, now in events
    ]
    return min([await _receive_round(key, protected) for _ in range(rounds)])


async def _receive_round(key: bytes, events: list[tuple[str, Any, float]]) -> float:
    estimator = BandwidthEstimator()
    viewer = SimpleNamespace(estimator=estimator, transport_cc=True, rtcp_errors=0, id="bench")
    seen = [0.0]

    async def handle_rtcp(data: bytes) -> None:  # aiortc's own parse: nothing is left for it
        raise AssertionError("only transport-cc was sent")

    async def tapped(data: bytes) -> None:  # relay.rtc.adapter.tap_rtcp's wrapper
        rest = ViewerSession.on_rtcp_data(viewer, data)  # type: ignore[arg-type]
        if rest:
            await handle_rtcp(rest)

    async def consent(data: bytes) -> None:  # relay.rtc.adapter._consent_by_traffic's wrapper
        seen[0] = time.monotonic()
        await tapped(data)

    queue: asyncio.Queue[Any] = asyncio.Queue()
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    protocols: Any = {"": SimpleNamespace(local_candidate=SimpleNamespace(component=1))}
    connection = SimpleNamespace(  # aioice's Connection: data_received queues the datagram
        _queue=queue, data_received=lambda data, component: queue.put_nowait((data, component))
    )
    sink = _SessionSink(connection, protocols)  # SRTCP: to the queue

    async def consume() -> None:  # RTCDtlsTransport._recv_next, for SRTCP (its byte and
        # packet counters left out)
        while True:
            data, _ = await queue.get()
            await consent(rx.unprotect_rtcp(data))

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    spent = idle = 0.0
    feedbacks = 0
    for kind, data, _ in events:
        if kind == "send":  # at the real clock: on_rtcp_data reads it for the feedback
            estimator.record(data, time.monotonic())
            estimator.sent(sum(data), time.monotonic())
            continue
        feedbacks += 1
        t0 = time.thread_time()
        await asyncio.sleep(0)  # loop turns with nothing delivered: subtracted
        await asyncio.sleep(0)
        t1 = time.thread_time()
        sink.datagram_received(data, ("127.0.0.1", 9), "")
        await asyncio.sleep(0)  # the consumer's turn
        await asyncio.sleep(0)
        t2 = time.thread_time()
        idle += t1 - t0
        spent += t2 - t1
    consumer.cancel()
    assert estimator.feedbacks == feedbacks and estimator.unknown == 0
    return (spent - idle) / feedbacks * 1e6


def port_path_cost(
    seconds: int = 20, rounds: int = 5, *, native: bool = True, lane: bool = False
) -> float:
    """Thread CPU (us) per feedback datagram through the port's read-callback path: the
    reader's decrypt and split, and the session's ``on_transport_feedback``; with ``lane``,
    through the reader bound as the port's feedback lane instead (``take``: decrypt, split and
    the estimator's C state in one call, relay/rtc/_rtcp_reader.c); best of ``rounds``."""
    key = bytes(range(30))
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    events = feedback_trace(seconds)
    estimator_module.FEEDBACK_RATE = 1e9  # replayed faster than real time (see above)
    protected = [
        (kind, tx.protect_rtcp(data) if kind == "feedback" else data, now)
        for kind, data, now in events
    ]
    best = float("inf")
    for _ in range(rounds):
        rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
        reader = new_rtcp_reader(rx, native=native)
        estimator = BandwidthEstimator()
        viewer = SimpleNamespace(estimator=estimator, rtcp_errors=0, port_feedbacks=0, id="bench")
        if lane:
            state = estimator.lane()
            assert state is not None
            reader.bind(*state, lambda *_: None, lambda *_: None)
        spent = 0.0
        feedbacks = 0
        for kind, data, _ in protected:
            if kind == "send":
                estimator.record(data, time.monotonic())
                estimator.sent(sum(data), time.monotonic())
                continue
            feedbacks += 1
            t0 = time.thread_time()
            if lane:
                assert reader.take(data)
                spent += time.thread_time() - t0
                continue
            split = reader.read(data)
            assert split is not None
            fcis, rest = split
            ViewerSession.on_transport_feedback(viewer, fcis)  # type: ignore[arg-type]
            spent += time.thread_time() - t0
            assert not rest
        assert estimator.feedbacks == feedbacks and estimator.unknown == 0
        best = min(best, spent / feedbacks * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--python", action="store_true", help="the Python send loop")
    args = parser.parse_args(argv)
    result = run(args.frames, native=not args.python)
    base = result["plain"]
    print(f"send loop: {'Python' if args.python else 'C'}; us per viewer and frame (6 packets)")
    for variant, us in result.items():
        if "bookkeeping" in variant:
            print(f"{variant:21s} {us:7.2f} us  ({100 * us / base:.1f} % of plain)")
        else:
            print(f"{variant:21s} {us:7.2f} us  {100 * (us / base - 1):+6.1f} %")
    for native in (True, False):
        send, feedback, per = feedback_cost(native=native)
        print(
            f"estimator per viewer-second ({'C' if native else 'Python'} feedback): sends "
            f"{send:.3f} ms, transport-cc feedback {feedback:.3f} ms at 20/s ({per:.1f} us "
            f"each: {feedback / 1000:.5f} core per viewer)"
        )
    us = asyncio.run(receive_path_cost())
    print(
        f"feedback datagram, session sink to estimator: {us:.1f} us each, "
        f"{us * 20 / 1e6:.5f} core per viewer at 20/s"
    )
    for native, lane in ((True, False), (False, False), (True, True), (False, True)):
        us = port_path_cost(native=native, lane=lane)
        where = "the port's feedback lane" if lane else "the port's read callback"
        print(
            f"feedback datagram in {where} ({'C' if native else 'Python'} reader): {us:.1f} us "
            f"each, {us * 20 / 1e6:.5f} core per viewer at 20/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
