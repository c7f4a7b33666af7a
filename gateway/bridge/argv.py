"""The ffmpeg command line of a bridge, built by one pure function (ffmpeg-python, no shell)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

BridgeKind = Literal["rtmp", "hls"]

# What the bridge writes into ffmpeg's stdin: Matroska carries H264 and VP8 and Opus with
# millisecond timestamps, and ffmpeg reads it from a pipe without seeking.
FEED_FORMAT = "matroska"


# rates cameras and encoders run at; a measured rate near one of them is taken to be it
COMMON_FRAME_RATES = (10, 12, 15, 20, 24, 25, 30, 48, 50, 60, 90, 120)


def frame_rate_of(timestamps: list[int], clock_rate: int) -> float | None:
    """Frames per second from consecutive frames' RTP timestamps (the sender's capture clock,
    free of network jitter; they wrap at 2**32)."""
    if len(timestamps) < 2:
        return None
    span = sum((b - a) % (1 << 32) for a, b in itertools.pairwise(timestamps))
    return (len(timestamps) - 1) * clock_rate / span if span else None


def nominal_frame_rate(measured: float | None, default: int = 30) -> int:
    """The frame rate to declare for a program measured at ``measured`` frames per second
    (None: not measured): the lowest common rate from 3 % below to 12 % above it (a camera
    falls short of its rate, rarely over it), else the nearest integer."""
    if measured is None or measured <= 0:
        return default
    near = [r for r in COMMON_FRAME_RATES if measured * 0.97 <= r <= measured * 1.12]
    if near:
        return near[0]
    return min(max(1, round(measured)), COMMON_FRAME_RATES[-1])


@dataclass(frozen=True, slots=True)
class FfmpegPlan:
    """Everything the command line depends on."""

    ffmpeg: str
    kind: BridgeKind
    video: str | None  # program video codec ("H264", "VP8") or None
    audio: str | None  # program audio codec ("opus") or None
    url: str = ""  # RTMP target (rtmp:// or rtmps://)
    keyframe_interval: float = 1.0  # GOP when transcoding
    fragment_duration: float = 0.26  # HLS: fMP4 fragment (= LL-HLS part) length to aim for
    video_bitrate_kbps: int = 2500
    audio_bitrate_kbps: int = 128
    frame_rate: int | None = None  # RTMP: declared in the FLV metadata (CDNs show and check it)

    @property
    def copies_video(self) -> bool:
        return (self.video or "").upper() == "H264"


def build_argv(plan: FfmpegPlan) -> list[str]:
    """ffmpeg reading the Matroska feed on stdin; RTMP: FLV to the URL, progress on stdout;
    HLS: fragmented MP4 on stdout (the LL-HLS packager cuts parts and segments from it)."""
    if plan.video is None and plan.audio is None:
        raise ValueError("a bridge needs at least one of video and audio")
    import ffmpeg  # ffmpeg-python (with future): loaded by the first bridge, not by every node

    # little probing: the feed's header already says what is inside. (No ``-fflags nobuffer``:
    # it throws away the packets read while probing, i.e. the frames after the first keyframe.)
    src = ffmpeg.input("pipe:0", f=FEED_FORMAT, probesize=32, analyzeduration=0)
    streams: list[Any] = []
    opts: dict[str, Any] = {}
    if plan.video is not None:
        streams.append(src["v:0"])
        if plan.copies_video:
            opts["c:v"] = "copy"
        else:
            kbps = plan.video_bitrate_kbps
            opts.update(
                {
                    "c:v": "libx264",
                    "preset": "ultrafast",
                    "tune": "zerolatency",
                    "pix_fmt": "yuv420p",
                    "b:v": f"{kbps}k",
                    "maxrate": f"{kbps}k",
                    "bufsize": f"{kbps * 2}k",
                    "force_key_frames": f"expr:gte(t,n_forced*{plan.keyframe_interval:g})",
                    "x264-params": "scenecut=0",
                }
            )
    if plan.audio is not None:
        streams.append(src["a:0"])
        opts.update({"c:a": "aac", "b:a": f"{plan.audio_bitrate_kbps}k", "ar": 48000, "ac": 2})
        # An anchor with Opus DTX (``media.anchor_opus_dtx``) sends nothing while silent, and
        # lost audio leaves holes too: AAC frames have a fixed length, so without filling the
        # holes with silence the audio would run ahead of the video after every pause.
        opts["af"] = "aresample=async=1"
    if plan.kind == "rtmp":
        if not plan.url:
            raise ValueError("an RTMP bridge needs a URL")
        target = plan.url
        opts.update({"f": "flv", "flvflags": "no_duration_filesize"})
        if plan.video is not None and plan.frame_rate:
            # the Matroska feed declares no rate and ffmpeg probes too little to guess one, so
            # onMetaData had no framerate (nginx-rtmp showed 0). An output -r on a stream copy
            # only declares it: the timestamps pass unchanged
            opts["r"] = plan.frame_rate
        progress = ["-progress", "pipe:1", "-stats_period", "0.5"]
    else:
        target = "pipe:1"
        opts.update(
            {
                "f": "mp4",
                "movflags": "empty_moov+default_base_moof+frag_keyframe",
                "frag_duration": round(plan.fragment_duration * 1_000_000),
                "flush_packets": 1,
            }
        )
        progress = []
    compiled: list[str] = ffmpeg.output(*streams, target, **opts).compile(cmd=plan.ffmpeg)
    # global options first: ffmpeg may ignore options trailing the last output
    head = ["-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", *progress]
    return [compiled[0], *head, *compiled[1:]]
