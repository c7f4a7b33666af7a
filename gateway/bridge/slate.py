"""The slate: black video and silence that keep an HLS playlist live while no stream feeds it
(anchor away, ffmpeg restarting). Encoded once per size into one fMP4 fragment whose audio and
video last exactly as long (whole AAC frames, video frames of equal length on the same 48 kHz
clock), then repeated with its decode times moved on (``fmp4.retime_fragment``), so the slate's
timeline never drifts however long it runs. The fragment starts with a keyframe (the rest of
its pictures repeat it for a few bytes): any repetition may start a segment."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .fmp4 import BoxSplitter, parse_fragment, parse_init, retime_fragment, track_durations

RATE = 48000
AAC_FRAME = 1024
FRAMES_PER_PICTURE = 2  # one picture every two AAC frames (42.7 ms, ~23.4 fps)


@dataclass(frozen=True, slots=True)
class Slate:
    init: bytes
    fragment: bytes  # moof + mdat at decode time 0
    duration: float  # seconds (the same for every track)
    ticks: dict[int, int]  # track id -> fragment duration in that track's timescale

    def part(self, n: int) -> bytes:
        """The ``n``-th repetition, on a timeline continuing from the ones before."""
        return retime_fragment(self.fragment, {t: n * d for t, d in self.ticks.items()}, n + 1)


def aac_frames_for(part_target: float) -> int:
    """AAC frames per slate fragment: as many as fit in a part, an even number (>= 2)."""
    return max(2, int(part_target * RATE / AAC_FRAME) // 2 * 2)


def encode_slate(
    width: int, height: int, *, video: bool = True, audio: bool = True, part_target: float = 0.3
) -> Slate:
    """Black ``width`` x ``height`` H264 (constrained baseline) and/or silent stereo AAC-LC at
    48 kHz, one fragment no longer than ``part_target``. Runs PyAV: call it off the event loop."""
    if not (video or audio):
        raise ValueError("a slate needs video or audio")
    # here: a node that never bridges loads neither numpy (~14 MB) nor PyAV (~25 MB)
    import av
    import numpy as np

    width, height = max(16, width // 2 * 2), max(16, height // 2 * 2)
    aac_frames = aac_frames_for(part_target)
    ticks = aac_frames * AAC_FRAME  # one fragment, at 48 kHz
    tb = Fraction(1, RATE)
    buf = io.BytesIO()
    # fragments cut when a packet lies a fragment's length after the fragment's first one:
    # exactly at the end of the first repetition, where both tracks have a packet
    frag_us = ticks * 1_000_000 // RATE - 1000
    out = av.open(
        buf,
        "w",
        format="mp4",
        options={"movflags": "empty_moov+default_base_moof", "frag_duration": str(frag_us)},
    )
    packets: list[tuple[int, Any, Any]] = []
    if video:
        vs = out.add_stream("libx264", rate=Fraction(RATE, AAC_FRAME * FRAMES_PER_PICTURE))
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.time_base = tb
        vs.codec_context.time_base = tb
        vs.codec_context.gop_size = aac_frames // FRAMES_PER_PICTURE  # one per fragment
        vs.codec_context.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": "baseline",
            "x264-params": "scenecut=0",
        }
        black = np.zeros((height * 3 // 2, width), np.uint8)
        black[height:] = 128
        step = AAC_FRAME * FRAMES_PER_PICTURE
        pictures = 2 * ticks // step
        encoded: list[Any] = []
        for i in range(pictures):
            frame = av.VideoFrame.from_ndarray(black, format="yuv420p")
            frame.pts, frame.time_base = i * step, tb
            encoded += vs.encode(frame)
        encoded += vs.encode(None)
        for i, pkt in enumerate(encoded[:pictures]):
            pkt.pts = pkt.dts = i * step
            pkt.duration = step
            packets.append((i * step, pkt, vs))
    if audio:
        aus = out.add_stream("aac", rate=RATE, layout="stereo")
        aus.time_base = tb
        aus.codec_context.bit_rate = 64_000
        silence = np.zeros((2, AAC_FRAME), np.float32)
        encoded = []
        for i in range(2 * aac_frames + 2):
            aframe = av.AudioFrame.from_ndarray(silence, format="fltp", layout="stereo")
            aframe.sample_rate, aframe.pts, aframe.time_base = RATE, i * AAC_FRAME, tb
            encoded += aus.encode(aframe)
        encoded += aus.encode(None)
        # the encoder's first packets carry its priming: every packet is silence, so they are
        # laid on the timeline in order from 0
        for i, pkt in enumerate(encoded[: 2 * aac_frames]):
            pkt.pts = pkt.dts = i * AAC_FRAME
            pkt.duration = AAC_FRAME
            packets.append((i * AAC_FRAME, pkt, aus))
    packets.sort(key=lambda p: p[0])
    for _t, pkt, stream in packets:
        pkt.stream = stream
        pkt.time_base = tb
        out.mux(pkt)
    out.close()

    boxes = BoxSplitter().feed(buf.getvalue())
    kinds = [b.type for b in boxes]
    if kinds[:2] != ["ftyp", "moov"] or "moof" not in kinds:
        raise RuntimeError(f"unexpected slate layout {kinds}")
    init = boxes[0].data + boxes[1].data
    tracks = parse_init(boxes[1].data)
    first = kinds.index("moof")
    moof, mdat = boxes[first].data, boxes[first + 1].data
    info = parse_fragment(moof, tracks)
    durations = track_durations(moof, tracks)
    seconds = {t: d / tracks[t].timescale for t, d in durations.items()}
    if not info.independent or any(abs(s - ticks / RATE) > 1e-6 for s in seconds.values()):
        raise RuntimeError(f"slate fragment is not {ticks / RATE:.4f} s in every track: {seconds}")
    return Slate(init, moof + mdat, ticks / RATE, durations)
