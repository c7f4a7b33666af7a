"""The bed's anchor and viewer processes, each run inside its leg's namespace:

    python -m bench.netbed.peer anchor URL ROOM --token T [--kbps 1500]
    python -m bench.netbed.peer viewer URL ROOM --seconds 30 [--query layer=720p] [--resync]

The anchor publishes the stamped 30 fps test pattern (720p unless told; x264 ultrafast at a
constant ``--kbps``, REMB ignored, keyframes only when asked, like a camera that does not adapt)
and a tone until
stdin closes; it then prints one JSON line: frames and keyframes it encoded. The viewer watches
and decodes for ``--seconds`` and prints one JSON line: its WHEP session id and ``Playback``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx

from bench.netbed.holes import HoleLog
from bench.netbed.playback import FreezeCounter, summarize
from gateway.synthetic import (
    StampedVideoTrack,
    ToneAudioTrack,
    Viewer,
    whep_watch,
    whip_publish,
)
from relay.rtc.adapter import (
    use_bench_h264_encoder,
    use_bench_keyframe_resync,
    use_bench_nack_log,
)

H264_IDR, H264_SPS, STAP_A, FU_A = 5, 7, 24, 28


def is_keyframe_payload(payload: bytes) -> bool:
    """An RTP H.264 payload that starts or carries an IDR picture (or its SPS)."""
    if not payload:
        return False
    kind = payload[0] & 0x1F
    if kind == STAP_A:
        return len(payload) > 3 and payload[3] & 0x1F in (H264_IDR, H264_SPS)
    if kind == FU_A:
        return len(payload) > 1 and payload[1] & 0x1F == H264_IDR
    return kind in (H264_IDR, H264_SPS)


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def anchor(args: argparse.Namespace) -> dict[str, Any]:
    counts = {"frames": 0, "keyframes": 0}

    def on_payloads(payloads: list[bytes]) -> None:
        counts["frames"] += 1
        if any(is_keyframe_payload(p) for p in payloads):
            counts["keyframes"] += 1

    use_bench_h264_encoder("ultrafast", args.kbps, on_payloads)
    publisher = await whip_publish(
        args.url,
        args.room,
        args.token,
        video=StampedVideoTrack(args.width, args.height, 30, grain=4),
        audio=ToneAudioTrack(),
        video_codec="H264",
    )
    print(json.dumps({"location": publisher.location}), flush=True)
    try:
        await _stdin_closed()
    finally:
        await publisher.close()
    return counts


async def watch(args: argparse.Namespace, counter: FreezeCounter) -> Viewer:
    """WHEP, retried while the node answers 409/503 (not live yet, busy) or the request is lost
    on the impaired link (a timeout), for up to 30 s, as a player would."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            room = f"{args.room}?{args.query}" if args.query else args.room
            return await whep_watch(args.url, room, args.token, on_frame=counter.frame)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in (409, 503) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(float(exc.response.headers.get("retry-after", "1")))
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise


def starts_keyframe(payload: bytes) -> bool:
    """An RTP H.264 payload that begins a keyframe: its SPS (alone or in a STAP-A) or the
    first fragment of an IDR slice."""
    if not payload:
        return False
    kind = payload[0] & 0x1F
    if kind == STAP_A:
        return len(payload) > 3 and payload[3] & 0x1F == H264_SPS
    if kind == FU_A:
        return len(payload) > 1 and payload[1] & 0x80 != 0 and payload[1] & 0x1F == H264_IDR
    return kind in (H264_IDR, H264_SPS)


async def viewer(args: argparse.Namespace) -> dict[str, Any]:
    if args.resync:
        use_bench_keyframe_resync(starts_keyframe)
    counter = FreezeCounter()
    holes = HoleLog()
    use_bench_nack_log(
        lambda seqs: holes.nacked(time.monotonic(), seqs),
        lambda seq: holes.arrived(time.monotonic(), seq),
        lambda seqs: holes.given_up(time.monotonic(), seqs),
    )
    watcher = await watch(args, counter)
    try:
        await asyncio.sleep(args.seconds)
        end = time.monotonic()
        received, lost = 0, 0
        for stats in (await watcher.pc.getStats()).values():
            if stats.type == "transport":
                received += getattr(stats, "bytesReceived", 0)
            elif stats.type == "inbound-rtp" and getattr(stats, "kind", "") == "video":
                lost += stats.packetsLost
        playback = summarize(
            counter,
            [s.latency_ms for s in watcher.samples],
            joined_at=watcher.joined_at,
            end=end,
            bytes_received=received,
            packets_lost=lost,
        )
    finally:
        await watcher.close()
    return {
        "session": watcher.location.rstrip("/").rsplit("/", 1)[-1],
        **playback.to_dict(),
        "joined_at": watcher.joined_at,  # monotonic: the machine's clock, in every namespace
        "ended_at": end,
        "freeze_events": counter.events,  # (end, duration), monotonic
        "gap_events": counter.gap_events,  # the same, frame intervals > 3 nominal ones
        "audio_frames": watcher.audio_frames,
        "holes": holes.holes(),  # (sequence, first NACKed, NACK times, filled at, given up at)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netbed.peer")
    parser.add_argument("role", choices=["anchor", "viewer"])
    parser.add_argument("url")
    parser.add_argument("room")
    parser.add_argument("--token", default=None)
    parser.add_argument("--kbps", type=int, default=1500)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--query", default="", help="viewer: WHEP query, e.g. layer=360p")
    parser.add_argument(
        "--resync",
        action="store_true",
        help="viewer: start over at a keyframe past a lost packet, as browsers do "
        "(aiortc otherwise waits 512 packets)",
    )
    args = parser.parse_args(argv)
    run = anchor if args.role == "anchor" else viewer
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
