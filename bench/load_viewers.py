"""Load viewers in a subprocess: WHEP viewers that count frames without decoding them.

``bench.fanout`` starts one or more of these so that the load side does not share an event loop
(and a core) with the publisher and the probe viewer whose latency is being measured. Driven by
JSON lines on stdin; every answer is one JSON line on stdout:

  {"op": "set", "n": 25}  open or close viewers until 25 are watching; answers
                          {"op": "set", "n": 25, "failed": 0, "ttff": [seconds, ...]} (new ones)
  {"op": "mark"}          remember every viewer's frame counts and the time
  {"op": "read"}          counts per viewer since the mark: {"op": "read", "video": [frames],
                          "audio": [packets], "packets": [RTP packets], "elapsed": seconds,
                          "connected": peer connections still connected, "feedback_sent":
                          transport-cc feedback packets the light viewers sent}
  {"op": "quit"} or EOF   close every viewer and exit

``--janus``: the viewers watch a Janus streaming mountpoint (``bench.janus``) instead of WHEP,
for ``bench.peer``'s side-by-side runs.

``--light``: once a viewer has its first frame, its RTP is counted at the socket (aioice's
connection) and never decrypted or parsed by aiortc, so one core holds hundreds of viewers; "read"
then reports those packet counts under "packets" (RTCP from the server is dropped too). This is
bench tooling reaching into aioice, never used by the product.

``--transport-cc``: the viewers offer transport-cc as Chromium does, and light viewers also send
its feedback as Chromium does (every ``FEEDBACK_INTERVAL``, built by the product's own
``TransportFeedbackGenerator`` from the sequence numbers read off the clear RTP headers), so
the server's per-viewer estimator takes feedback as it would from a browser.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

import httpx

from bench.janus import janus_watch
from gateway.synthetic import Viewer, whep_watch
from relay.media.twcc_feedback import TransportFeedbackGenerator, transport_sequence_number
from relay.rtc.adapter import divert_ice_datagrams, receiver_rtcp_ssrc, send_rtcp

log = logging.getLogger("bench.load_viewers")


async def rtp_packets(viewer: Viewer) -> int | None:
    """RTP packets (all kinds) the viewer's peer connection has received (its RTCP stats)."""
    try:
        stats = await viewer.pc.getStats()
    except Exception:
        return None
    return sum(
        int(s.packetsReceived) for s in stats.values() if getattr(s, "type", None) == "inbound-rtp"
    )


TWCC_EXT_ID = 4  # as offer_transport_cc writes it
FEEDBACK_INTERVAL = 0.05  # libwebrtc's shortest (it sends every 50-250 ms: ~5 % of the bitrate)


class SocketCounter:
    """Counts a connected viewer's incoming RTP datagrams instead of handing them to aiortc;
    with ``feedback``, records their transport-wide sequence numbers for it."""

    def __init__(self, viewer: Viewer, feedback: bool = False) -> None:
        self.packets = 0
        self.receiver = viewer.pc.getTransceivers()[0].receiver
        self.feedback = TransportFeedbackGenerator(interval=FEEDBACK_INTERVAL) if feedback else None
        self.feedback_sent = 0
        divert_ice_datagrams(self.receiver.transport, self._received)

    def _received(self, data: bytes, component: int) -> None:
        if len(data) > 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223:
            self.packets += 1
            if self.feedback is not None:
                seq = transport_sequence_number(data, TWCC_EXT_ID)
                if seq is not None:
                    ssrc = int.from_bytes(data[8:12])
                    self.feedback.record(seq, time.monotonic(), ssrc)

    async def send_feedback(self, now: float) -> None:
        """What has arrived since the last call, as the viewer's transport-cc feedback."""
        generator = self.feedback
        if generator is None or not generator.pending:
            return
        ssrc = receiver_rtcp_ssrc(self.receiver)
        if ssrc is None:
            return
        generator.sender_ssrc = ssrc
        for packet in generator.build(now):
            if await send_rtcp(self.receiver, packet):
                self.feedback_sent += 1


TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def offer_transport_cc(sdp: str) -> str:
    """aiortc's offer with transport-cc added as Chromium offers it (extension id 4, the
    ``transport-cc`` rtcp-fb on every codec with NACK), so the server numbers and records
    every packet for these viewers as for a browser. (The viewers never send the feedback.)"""
    out = []
    for line in sdp.splitlines():
        out.append(line)
        if line.startswith("a=extmap:1 "):
            out.append(f"a=extmap:4 {TWCC_URI}")
        elif line.startswith("a=rtcp-fb:") and line.endswith(" nack"):
            out.append(line.removesuffix(" nack") + " transport-cc")
    return "\r\n".join(out) + "\r\n"


class LoadPool:
    def __init__(
        self,
        base_url: str,
        room: str,
        *,
        concurrency: int,
        join_timeout: float,
        light: bool = False,
        janus: bool = False,
        transport_cc: bool = False,
        feedback_slices: int = 1,
    ) -> None:
        self.base_url = base_url
        self.janus = janus
        self.transport_cc = transport_cc
        self.feedback_slices = max(1, feedback_slices)
        self.room = room
        self.viewers: list[Viewer] = []
        self.light = light
        self.counters: dict[int, SocketCounter] = {}
        self._sem = asyncio.Semaphore(concurrency)
        self._join_timeout = join_timeout
        self._mark: list[tuple[int, int, int | None]] = []
        self._mark_at = time.monotonic()
        self._feedback: asyncio.Task[None] | None = None
        self._mark_feedback = 0
        self.retries = 0  # joins refused with 503 and tried again

    async def _open_one(self) -> Viewer | None:
        give_up = time.monotonic() + self._join_timeout
        while True:
            async with self._sem:
                try:
                    if self.janus:
                        viewer: Viewer = await janus_watch(
                            self.base_url, timeout=self._join_timeout
                        )
                    else:
                        viewer = await whep_watch(
                            self.base_url,
                            self.room,
                            decode=False,
                            timeout=self._join_timeout,
                            offer_transform=offer_transport_cc if self.transport_cc else None,
                        )
                    break
                except httpx.HTTPStatusError as exc:  # 503 + Retry-After: the node's join
                    # line is full; a real client comes back, so these do too, in time
                    retry = exc.response.headers.get("retry-after", "")
                    if exc.response.status_code != 503 or time.monotonic() > give_up:
                        log.warning("viewer failed to join: %r", exc)
                        return None
                except Exception as exc:
                    log.warning("viewer failed to join: %r", exc)
                    return None
            self.retries += 1
            await asyncio.sleep(float(retry) if retry.isdigit() else 1.0)
        deadline = time.monotonic() + self._join_timeout
        while time.monotonic() < deadline:  # polled: Viewer has no first-frame event
            if viewer.first_frame_at is not None:
                break
            await asyncio.sleep(0.05)
        if viewer.first_frame_at is None:
            log.warning("viewer joined but got no frame within %.0f s", self._join_timeout)
            await viewer.close()
            return None
        if self.light:
            self.counters[id(viewer)] = SocketCounter(viewer, feedback=self.transport_cc)
            if self.transport_cc and self._feedback is None:
                self._feedback = asyncio.create_task(self._send_feedback())
        return viewer

    async def _send_feedback(self) -> None:
        """Every FEEDBACK_INTERVAL, each light viewer's transport-cc feedback (one task for
        the process, not one per viewer): all at once, or with ``feedback_slices`` k, a k-th
        of the viewers every FEEDBACK_INTERVAL / k (Chromium viewers each send at their own
        phase: the node then reads them one by one, not in one batch)."""
        slices = self.feedback_slices
        step = 0
        while True:
            await asyncio.sleep(FEEDBACK_INTERVAL / slices)
            now = time.monotonic()
            counters = list(self.counters.values())[step % slices :: slices]
            step += 1
            for counter in counters:
                try:
                    await counter.send_feedback(now)
                except Exception as exc:  # a viewer going away; the others go on
                    log.debug("feedback failed: %r", exc)

    async def resize(self, n: int) -> dict[str, Any]:
        ttff: list[float] = []
        failed = 0
        if n > len(self.viewers):
            opened = await asyncio.gather(*(self._open_one() for _ in range(n - len(self.viewers))))
            for v in opened:
                if v is None:
                    failed += 1
                else:
                    self.viewers.append(v)
                    if v.time_to_first_frame is not None:
                        ttff.append(v.time_to_first_frame)
        elif n < len(self.viewers):
            gone, self.viewers = self.viewers[n:], self.viewers[:n]
            for v in gone:
                self.counters.pop(id(v), None)
            await asyncio.gather(*(v.close() for v in gone), return_exceptions=True)
        return {"op": "set", "n": len(self.viewers), "failed": failed, "ttff": ttff}

    async def _packets(self) -> list[int | None]:
        if self.light:
            return [self.counters[id(v)].packets for v in self.viewers]
        return list(await asyncio.gather(*(rtp_packets(v) for v in self.viewers)))

    async def mark(self) -> dict[str, Any]:
        packets = await self._packets()
        self._mark = [
            (v.video_frames, v.audio_frames, p) for v, p in zip(self.viewers, packets, strict=True)
        ]
        self._mark_at = time.monotonic()
        self._mark_feedback = self._feedback_sent()
        return {"op": "mark", "n": len(self.viewers)}

    def _feedback_sent(self) -> int:
        return sum(c.feedback_sent for c in self.counters.values())

    async def read(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self._mark_at
        counts = [(v.video_frames, v.audio_frames) for v in self.viewers]
        now_packets = await self._packets()
        video, audio = [], []
        packets: list[int | None] = []
        for i, ((vf, af), p) in enumerate(zip(counts, now_packets, strict=True)):
            v0, a0, p0 = self._mark[i] if i < len(self._mark) else (0, 0, None)
            video.append(vf - v0)
            audio.append(af - a0)
            packets.append(p - p0 if p is not None and p0 is not None and p >= p0 else None)
        return {
            "op": "read",
            "video": video,
            "audio": audio,
            "packets": packets,
            "elapsed": elapsed,
            "connected": sum(1 for v in self.viewers if v.pc.connectionState == "connected"),
            "feedback_sent": self._feedback_sent() - self._mark_feedback,  # since the mark
        }

    async def close(self) -> None:
        if self._feedback is not None:
            self._feedback.cancel()
        await self.resize(0)


async def serve(args: argparse.Namespace) -> None:
    pool = LoadPool(
        args.base_url,
        args.room,
        concurrency=args.concurrency,
        join_timeout=args.join_timeout,
        light=args.light,
        janus=args.janus,
        transport_cc=args.transport_cc,
        feedback_slices=args.feedback_slices,
    )
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "set":
                reply = await pool.resize(int(cmd["n"]))
            elif op == "mark":
                reply = await pool.mark()
            elif op == "read":
                reply = await pool.read()
            elif op == "quit":
                break
            else:
                reply = {"op": "error", "error": f"unknown op {op!r}"}
            print(json.dumps(reply), flush=True)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.close(), 30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--concurrency", type=int, default=4, help="joins in flight at once")
    parser.add_argument("--join-timeout", type=float, default=15.0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--light", action="store_true", help="count RTP at the socket only")
    parser.add_argument(
        "--janus", action="store_true", help="watch Janus's streaming mountpoint at --base-url"
    )
    parser.add_argument("--nice", type=int, default=0, help="lower this process's priority")
    parser.add_argument(
        "--transport-cc", action="store_true", help="offer transport-cc as Chromium does"
    )
    parser.add_argument(
        "--feedback-slices",
        type=int,
        default=1,
        help="send the viewers' feedback in this many slices per interval (1: all at once)",
    )
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)  # before any thread exists, so that every thread inherits it
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
