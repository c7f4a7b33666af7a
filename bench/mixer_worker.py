"""The mixer worker alone, no network: CPU per output frame of a 2- and 4-anchor 720p room.

Pre-encoded 720p30 H264 clips (x264 ultrafast, ~1.5 Mbps) and Opus tones are fed in real time
to a ``ProgramWorker`` (decode each once, composite to a grid, encode 720p and 360p once,
mix and encode Opus); its thread CPU is read from ``time.thread_time`` in the worker, and the
process's CPU (``process_cores``: the mixer, any helper threads, and this feeder) beside it.

    python -m bench.mixer_worker [--seconds 10] [--even]

By default the feeder's 50 Hz loop hands video over in bursts (frames 20, 20 and 60 ms apart),
and the phase of those bursts against the worker's 30 Hz clock decides whether every tick draws
a new picture from every anchor or only two ticks in three do: "composite" differs from one run
to the next. ``--even`` feeds video at an even 30 Hz half a
tick after the worker's clock instead: every tick draws a new picture from every anchor (the
steady-camera case, and the dearer one), the same in every run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from gateway.mixer.audio_mix import AudioControl
from gateway.mixer.codecs import OpusEncoder
from gateway.mixer.layout import LayoutSpec
from gateway.mixer.program import ProgramWorker, RenditionSpec
from gateway.synthetic import encoded_clip
from relay.media.frames import EncodedFrame


def opus_clip(freq: float, frames: int = 150) -> list[bytes]:
    enc = OpusEncoder()
    out: list[bytes] = []
    for i in range(frames):
        t = (np.arange(960) + i * 960) / 48000
        out += enc.encode((0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32))
    return out


def run(
    anchors: int, seconds: float, clip: list[tuple[bytes, bool]], *, even: bool = False
) -> dict[str, float]:
    emitted = {"video": 0, "audio": 0}

    def emit(r: str | None, f: EncodedFrame) -> None:
        emitted[f.kind] += 1

    worker = ProgramWorker(
        video_codec="H264",
        audio=True,
        renditions=[
            RenditionSpec("720p", 1280, 720, 2_000_000),
            RenditionSpec("360p", 640, 360, 600_000),
        ],
        fps=30,
        gop=60,
        audio_bitrate=64_000,
        input_frames=30,
        layout=LayoutSpec,
        controls=lambda: dict[str, AudioControl](),
        emit=emit,
    )
    ids = [f"a{i}" for i in range(anchors)]
    tones = [opus_clip(300 + 250 * i) for i in range(anchors)]
    for aid in ids:
        worker.add_input(aid, lambda: None)
    worker.start()
    t0 = time.monotonic()
    proc0 = time.process_time()
    if even:
        _feed_even(worker, ids, tones, clip, t0, seconds)
    n = 0
    while not even and time.monotonic() - t0 < seconds:
        due = t0 + n / 50  # 50 Hz: audio every tick, video every 5/3
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic()
        for i, aid in enumerate(ids):
            p = tones[i][n % len(tones[i])]
            worker.feed(aid, EncodedFrame("audio", "opus", n * 960, (p,), p, True, now))
            if n * 3 % 5 < 3:
                v = n * 3 // 5
                data, key = clip[v % len(clip)]
                worker.feed(aid, EncodedFrame("video", "H264", v * 3000, (), data, key, now))
        n += 1
    worker.stop()
    worker.join(5)
    process_cpu = time.process_time() - proc0
    st = worker.stats
    ticks = max(1, st.video_ticks)
    seconds = time.monotonic() - t0
    enc = st.encode_cpu_seconds
    decode_ms = st.decode_cpu_seconds / max(1, st.decoded_frames) * 1000
    composite_ms = st.composite_cpu_seconds / ticks * 1000
    enc720_ms = enc.get("720p", 0) / ticks * 1000
    enc360_ms = enc.get("360p", 0) / ticks * 1000
    audio_cores = st.audio_cpu_seconds / seconds
    # at a full 30 fps: every anchor decoded 30 times, 30 composites and encodes, the audio
    p720 = (anchors * decode_ms + composite_ms + enc720_ms) * 30 / 1000 + audio_cores
    return {
        "anchors": anchors,
        "seconds": round(seconds, 2),
        "output_frames": st.video_ticks,
        "skipped_ticks": st.skipped_ticks,
        "decode_ms_per_frame": round(decode_ms, 2),
        "composite_ms_per_output_frame": round(composite_ms, 2),
        "encode_720p_ms_per_frame": round(enc720_ms, 2),
        "encode_360p_ms_per_frame": round(enc360_ms, 2),
        "audio_cores": round(audio_cores, 4),
        "measured_mixer_cores": round(st.cpu_seconds / seconds, 3),
        # the whole process (this feeder too): catches work on threads the mixer's thread
        # time misses (swscale or codec helper threads)
        "process_cores": round(process_cpu / seconds, 3),
        "projected_720p_cores_30fps": round(p720, 3),
        "projected_both_renditions_cores_30fps": round(p720 + enc360_ms * 30 / 1000, 3),
    }


def _feed_even(
    worker: ProgramWorker,
    ids: list[str],
    tones: list[list[bytes]],
    clip: list[tuple[bytes, bool]],
    t0: float,
    seconds: float,
) -> None:
    """Audio every 20 ms and video every 1/30 s, the video half a tick after the worker's
    ticks (its clock starts with its thread, just before ``t0``)."""
    a = v = 0
    while True:
        next_a, next_v = t0 + a / 50, t0 + (v + 0.5) / 30
        due = min(next_a, next_v)
        if due - t0 >= seconds:
            return
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic()
        if next_a <= next_v:
            for i, aid in enumerate(ids):
                p = tones[i][a % len(tones[i])]
                worker.feed(aid, EncodedFrame("audio", "opus", a * 960, (p,), p, True, now))
            a += 1
        else:
            data, key = clip[v % len(clip)]
            for aid in ids:
                worker.feed(aid, EncodedFrame("video", "H264", v * 3000, (), data, key, now))
            v += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--even", action="store_true", help="video at an even 30 Hz: a new picture every tick"
    )
    args = parser.parse_args()
    clip = encoded_clip(1280, 720)
    rows = [run(n, args.seconds, clip, even=args.even) for n in (2, 4)]
    print(json.dumps({"rows": rows, "load_avg": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
