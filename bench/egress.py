"""Egress microbenchmark: server CPU per viewer per packet of the fan-out path itself.

One process holds a FanoutHub and a ViewerService (the production viewer path) with N real
aiortc viewers connected over loopback (their receivers count packets through the ingest tap, no
decoding). A pre-encoded 720p30 H264 stream (~1.5 Mbps) plus 20 ms Opus-sized audio frames is
published at real time. CPU is measured as thread CPU time spent inside ``FanoutHub.publish``,
which is where the direct path does all its per-viewer work, so the receivers sharing the process
(and other load on the machine) do not count. For ``--mode aiortc`` (aiortc's own sender task per
viewer, the previous path) the per-viewer work happens in sender tasks instead, so that mode
reports the whole process's CPU minus the same run's receiver-only baseline (less exact).

    python -m bench.egress --viewers 1,25,100 --mode direct
    python -m bench.egress --viewers 25 --mode aiortc
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import logging
import os
import time
from typing import Any

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.h264 import H264Encoder

from relay.auth.access import Grant
from relay.media.frames import CodecSpec, EncodedFrame
from relay.media.hub import FanoutHub
from relay.media.stream_key import StreamKey
from relay.rtc.adapter import install_ingest_tap
from relay.rtc.peer import close_quietly, rtc_configuration
from relay.rtc.sdp import check_offer
from relay.rtc.viewers import ViewerLimits, ViewerService

FPS = 30


def encode_clip(frames: int, kbps: int) -> list[tuple[tuple[bytes, ...], int, bool]]:
    """720p H264 access units packetised by aiortc's H264 packer: (payloads, ts, keyframe)."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = 1280, 720, "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.bit_rate = kbps * 1000
    codec.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "60"}
    packer = H264Encoder()
    out = []
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 255, (720, 1280), dtype=np.uint8)
    for i in range(frames):
        img = np.roll(noise, i * 8, axis=1)
        frame = av.VideoFrame.from_ndarray(np.stack([img, img, img], axis=-1), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        for packet in codec.encode(frame):
            payloads, _ = packer.pack(packet)
            out.append((tuple(payloads), i * 3000, bool(packet.is_keyframe)))
    return out


async def open_viewer(service: ViewerService, counts: list[int]) -> RTCPeerConnection:
    pc = RTCPeerConnection(rtc_configuration(()))
    transceivers = [pc.addTransceiver(k, direction="recvonly") for k in ("video", "audio")]
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    key, grant = StreamKey("bench"), Grant("b", "", 0)
    session = await service.open(key, sdp, check_offer(sdp, "view"), grant)
    await pc.setRemoteDescription(RTCSessionDescription(session.pc.localDescription.sdp, "answer"))
    idx = len(counts)
    counts.append(0)

    def count(_p: Any, _c: Any) -> None:
        counts[idx] += 1

    for t in transceivers:
        install_ingest_tap(t.receiver, count)
    return pc


async def run(n: int, mode: str, seconds: float, clip: list[Any]) -> dict[str, float]:
    hub = FanoutHub(
        StreamKey("bench"),
        {
            "video": CodecSpec("video", "H264", 90000),
            "audio": CodecSpec("audio", "opus", 48000),
        },
    )
    hub.set_keyframe_requester(lambda: None)
    service = ViewerService(lambda key, subject: hub, limits=ViewerLimits(direct=mode == "direct"))
    counts: list[int] = []
    pcs = [await open_viewer(service, counts) for _ in range(n)]
    for _ in range(200):
        if hub.viewer_count >= n:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    audio = (bytes(120),)
    publish_cpu = 0.0
    packets = 0
    start_counts = sum(counts)
    t0, c0 = time.monotonic(), time.process_time()
    i = 0
    atick = 0
    next_at = t0
    while time.monotonic() - t0 < seconds:
        payloads, ts, key = clip[i % len(clip)]
        now = time.monotonic()
        frame = EncodedFrame(
            "video", "H264", ts + (i // len(clip)) * len(clip) * 3000, payloads, b"", key, now
        )
        a = time.thread_time()
        hub.publish(frame)
        for _ in range(2):  # ~20 ms audio frames alongside 33 ms video
            if atick * 960 <= i * 1600:
                hub.publish(EncodedFrame("audio", "opus", atick * 960, audio, b"", True, now))
                atick += 1
                packets += 1
        publish_cpu += time.thread_time() - a
        packets += len(payloads)
        i += 1
        next_at += 1 / FPS
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    wall = time.monotonic() - t0
    proc = time.process_time() - c0
    await asyncio.sleep(0.5)
    received = sum(counts) - start_counts
    await service.shutdown()
    for pc in pcs:
        await close_quietly(pc)
    sends = packets * n
    return {
        "viewers": n,
        "pkt_per_s": packets / wall,
        "publish_cores": publish_cpu / wall,
        "us_per_pkt_viewer": publish_cpu / sends * 1e6 if sends else 0.0,
        "process_cores": proc / wall,
        "received": received / sends if sends else 0.0,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", default="1,25,100")
    parser.add_argument("--mode", choices=("direct", "aiortc"), default="direct")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--kbps", type=int, default=1500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    clip = encode_clip(90, args.kbps)
    print(f"pid {os.getpid()}, clip {len(clip)} frames, mode {args.mode}")
    print(
        "| mode | N | pkt/s | publish cores | us/pkt/viewer | core/viewer (publish) |"
        " viewers/core | process cores | received |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.viewers.split(",")]:
        r = await run(n, args.mode, args.seconds, clip)
        per_viewer = r["publish_cores"] / n
        print(
            f"| {args.mode} | {n} | {r['pkt_per_s']:.0f} | {r['publish_cores']:.3f} "
            f"| {r['us_per_pkt_viewer']:.1f} | {per_viewer:.4f} "
            f"| {1 / per_viewer if per_viewer else 0:.0f} | {r['process_cores']:.2f} "
            f"| {r['received'] * 100:.1f}% |",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
