"""CDN bridge pieces against a real ffmpeg process: fMP4 parsing of its output and the process
stop escalation (terminate -> kill -> reap)."""

from __future__ import annotations

import asyncio
import fractions
import io
import subprocess
import sys
import threading
import time

import av
import numpy as np
import psutil
import pytest

from gateway.bridge.argv import FfmpegPlan, build_argv
from gateway.bridge.feed import FeedPacket, FrameFeed, write_feed
from gateway.bridge.fmp4 import BoxSplitter, parse_fragment, parse_init
from gateway.bridge.process import FfmpegProcess
from gateway.bridge.service import default_ffmpeg

FFMPEG = default_ffmpeg()


def encoded_av(seconds: float, codec: str = "libx264") -> list[FeedPacket]:
    """Real H264 (or VP8) + Opus packets on one ms timeline, like the hub delivers them."""
    venc = av.CodecContext.create(codec, "w")
    venc.width, venc.height, venc.pix_fmt = 320, 180, "yuv420p"
    venc.time_base = fractions.Fraction(1, 90000)
    venc.framerate = fractions.Fraction(30)
    if codec == "libx264":
        venc.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
    venc.gop_size = 30
    aenc = av.CodecContext.create("libopus", "w")
    aenc.sample_rate, aenc.layout, aenc.format = 48000, "mono", "s16"
    out: list[FeedPacket] = []
    name = "H264" if codec == "libx264" else "VP8"
    for i in range(int(seconds * 30)):
        img = np.full((270, 320), (i * 7) % 256, np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
        frame.pts = i * 3000
        for p in venc.encode(frame):
            out.append(FeedPacket("video", name, round(p.pts / 90), bytes(p), p.is_keyframe))
    for i in range(int(seconds * 50)):
        wave = (np.sin(np.arange(960) / 9) * 8000).astype("<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(wave, format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, i * 960
        frame.time_base = fractions.Fraction(1, 48000)
        for p in aenc.encode(frame):
            out.append(FeedPacket("audio", "opus", round(p.pts / 48), bytes(p), True))
    out.sort(key=lambda p: (p.pts_ms, p.kind))
    return out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("codec", ["libx264", "libvpx"])
def test_feed_through_real_ffmpeg_to_fmp4(codec: str) -> None:
    """write_feed (PyAV -> Matroska -> pipe) into ffmpeg built by build_argv, fMP4 parsed."""
    packets = encoded_av(2.0, codec)
    video = "H264" if codec == "libx264" else "VP8"
    argv = build_argv(FfmpegPlan(FFMPEG, "hls", video, "opus", fragment_duration=0.26))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    feed = FrameFeed(maxlen=1000, has_video=True)
    errors: list[BaseException | None] = []
    writer = threading.Thread(
        target=write_feed,
        args=(feed, proc.stdin, {"video": video, "audio": "opus"}, errors.append),
    )
    writer.start()
    for p in packets:
        feed.put(p)
    feed.close()
    data = proc.stdout.read()
    writer.join(10)
    assert proc.wait(10) == 0 and errors == [None]

    splitter = BoxSplitter()
    boxes = [b for i in range(0, len(data), 1000) for b in splitter.feed(data[i : i + 1000])]
    kinds = [b.type for b in boxes]
    assert kinds[:2] == ["ftyp", "moov"] and kinds.count("moof") == kinds.count("mdat") >= 6
    tracks = parse_init(boxes[1].data)
    assert sorted(t.handler for t in tracks.values()) == ["soun", "vide"]
    infos = [parse_fragment(b.data, tracks) for b in boxes if b.type == "moof"]
    assert infos[0].independent and infos[0].start == pytest.approx(0, abs=0.05)
    print([(round(i.start, 3), round(i.duration, 3), i.independent) for i in infos])
    assert all(i.duration <= 0.3 + 1e-6 for i in infos)
    assert sum(i.duration for i in infos) == pytest.approx(2.0, abs=0.1)
    assert 1 <= sum(i.independent for i in infos) <= 3  # keyframes every 30 frames: parts 0, ~4

    with av.open(io.BytesIO(data), format="mp4") as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert sum(1 for _ in c.decode(video=0)) == 60


# -- process -------------------------------------------------------------------------------------
@pytest.mark.timeout(20)
async def test_process_stop_escalates_terminate_then_kill_and_reaps() -> None:
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    ]
    proc = FfmpegProcess(stubborn, "stubborn")
    await proc.start()
    assert await proc.stdout.readline() == b"ready\n"
    pid = proc.pid
    assert pid is not None
    t0 = time.monotonic()
    await proc.stop(timeout=0.3)  # no exit on end of input, ignores SIGTERM: killed
    assert time.monotonic() - t0 < 5
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    # asyncio's child watcher reports 255 ("unknown child process") when the exit status was
    # collected elsewhere first (seen once in a full suite run); the process is gone either way.
    assert proc.returncode in (-9, 255)
    if proc.returncode == -9:
        assert proc.reason() == "ffmpeg ended (killed)"

    polite = FfmpegProcess([sys.executable, "-c", "import sys; sys.stdin.read()"], "polite")
    await polite.start()
    pipe = polite.take_feed_pipe()
    await asyncio.to_thread(pipe.close)  # end of input: it exits by itself
    await polite.stop(timeout=5)
    assert polite.returncode == 0
    with pytest.raises(RuntimeError):
        polite.take_feed_pipe()
