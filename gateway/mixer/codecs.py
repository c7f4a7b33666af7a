"""PyAV encoders/decoders and RTP packetising for the program worker (worker thread only).

The mixer encodes in the program's codec, so viewers that negotiated it never renegotiate:
H264 with libx264 (ultrafast, zerolatency, constrained baseline, level 3.1, Annex-B, QP floor
16) or VP8 with libvpx (realtime, cpu-used -6, no lag). Audio is always Opus, one RTP payload
per 20 ms frame.

RTP packetising reuses aiortc's packetisers through ``relay.rtc.adapter`` (private aiortc API,
kept with the adapter's other hooks and pinned with it).
"""

from __future__ import annotations

import fractions
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from relay.rtc.adapter import Vp8Packetizer, packetize_h264

from . import opus
from .audio_mix import Samples
from .compositor import scale_frame
from .halve import halve_into
from .layout import Rect
from .rate_control import QpRateControl

try:
    from . import _x264
except ImportError:  # built without libx264-dev: PyAV's libx264 encodes, with its own ABR
    _x264 = None  # type: ignore[assignment]

NATIVE_X264 = _x264 is not None

RATE = 48000
AUDIO_FRAME = 960  # 20 ms
VIDEO_CLOCK = 90000
# x264's quantiser floor. Average bitrate alone lets x264 code an easy picture (a static
# background, a synthetic pattern, four tiles of decoded already-compressed video) nearly
# losslessly: no viewer sees that, and coding those coefficients costs encoder time and bits
# (the figures: BENCHMARKS.md, "Code figures"). Harder pictures sit above the floor and still
# get the full bitrate. A ceiling, not a target, as WebRTC's max bitrate is.
H264_QP_MIN = 16


__all__ = ["Vp8Packetizer", "packetize_h264"]

_OPUS_TIME_BASE = fractions.Fraction(1, RATE)


class VideoEncoder:
    """One rendition's encoder: ``encode(frame, keyframe)`` -> [(bitstream, is_keyframe)].

    H264 goes through ``_x264`` (libx264 itself, a QP per frame from ``QpRateControl``) where
    it is built and ``direct``: the same x264 settings without x264's ABR lookahead, about a
    quarter of an ultrafast encode (BENCHMARKS.md, "Code figures"); else through PyAV."""

    def __init__(
        self,
        codec: str,
        width: int,
        height: int,
        fps: int,
        bitrate: int,
        gop: int,
        *,
        direct: bool = True,
    ) -> None:
        self.codec = codec.upper()
        self.width, self.height = width, height
        self._scaler = VideoReformatter()  # the program picture -> this rendition's size
        self._half: Any = None  # this rendition's picture when it is the program's halved
        self._pts = 0
        self._x264: Any = None
        self._rc: QpRateControl | None = None
        if self.codec == "H264" and direct and _x264 is not None:
            self._x264 = _x264.Encoder(width, height, fps, gop)
            self._rc = QpRateControl(
                bitrate, fps, qp_min=max(H264_QP_MIN, _x264.QP_LOW), qp_max=_x264.QP_HIGH
            )
            self._pack: Any = packetize_h264
            return
        if self.codec == "H264":
            ctx = av.CodecContext.create("libx264", "w")
            ctx.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "level": "31",
                "x264-params": (
                    f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1:qpmin={H264_QP_MIN}"
                ),
            }
            ctx.profile = "Baseline"
            self._pack = packetize_h264
        elif self.codec == "VP8":
            ctx = av.CodecContext.create("libvpx", "w")
            ctx.gop_size = gop
            ctx.options = {
                "deadline": "realtime",
                "cpu-used": "-6",
                "lag-in-frames": "0",
                "static-thresh": "1",
                "undershoot-pct": "100",
                "overshoot-pct": "15",
                "bufsize": str(bitrate),
                "minrate": str(bitrate),
                "maxrate": str(bitrate),
            }
            ctx.qmin, ctx.qmax = 2, 56
            self._pack = Vp8Packetizer()
        else:
            raise ValueError(f"the mixer cannot encode {codec}")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.bit_rate = bitrate
        ctx.framerate = fractions.Fraction(fps, 1)
        ctx.time_base = fractions.Fraction(1, fps)
        ctx.thread_count = 1
        self._ctx = ctx

    @property
    def direct(self) -> bool:
        return self._x264 is not None

    def encode(self, frame: Any, keyframe: bool) -> list[tuple[bytes, bool]]:
        if frame.width != self.width or frame.height != self.height:
            frame = self._scaled(frame)
        if self._x264 is not None and self._rc is not None:
            qp = self._rc.next_qp(keyframe)
            p = frame.planes
            data, key = self._x264.encode(
                p, (p[0].line_size, p[1].line_size, p[2].line_size), qp, keyframe
            )
            self._rc.update(len(data) * 8, qp, key)
            return [(data, key)] if data else []
        frame.pts = self._pts
        frame.time_base = self._ctx.time_base
        self._pts += 1
        frame.pict_type = av.video.frame.PictureType.I if keyframe else 0
        return [(bytes(p), bool(p.is_keyframe)) for p in self._ctx.encode(frame)]

    def _scaled(self, frame: Any) -> Any:
        """The program picture at this rendition's size: halved into a frame kept from tick
        to tick (the encoder copies it before ``encode`` returns), else by libswscale."""
        if self._half is None:
            self._half = av.VideoFrame(self.width, self.height, "yuv420p")
        if halve_into(frame, self._half, Rect(0, 0, self.width, self.height)):
            return self._half
        return scale_frame(self._scaler, frame, self.width, self.height)

    def packetize(self, data: bytes) -> list[bytes]:
        payloads: list[bytes] = self._pack(data)
        return payloads


class OpusEncoder:
    """Float mono blocks -> Opus packets. libopus takes float samples as they are (it converts
    16-bit input to float itself), so the mix goes in without a round trip through int16.
    libopus is called directly where ``opus.load`` finds it (``direct``), else through PyAV;
    both give the same packets."""

    def __init__(self, bitrate: int = 64000, *, direct: bool = True) -> None:
        lib = opus.load() if direct else None
        self._direct = opus.Encoder(lib, RATE, bitrate) if lib is not None else None
        self._pts = 0
        if self._direct is not None:
            return
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = RATE
        ctx.layout = "mono"
        ctx.format = "flt"
        ctx.bit_rate = bitrate
        ctx.time_base = _OPUS_TIME_BASE
        ctx.options = {"application": "lowdelay", "frame_duration": "20"}
        self._ctx = ctx

    @property
    def direct(self) -> bool:
        return self._direct is not None

    def encode(self, block: Samples) -> list[bytes]:
        pcm = np.ascontiguousarray(block, np.float32)
        if self._direct is not None:
            return [self._direct.encode(pcm)]
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = _OPUS_TIME_BASE
        self._pts += block.size
        return [bytes(p) for p in self._ctx.encode(frame)]


class VideoDecoder:
    """An anchor's full decode, on the calling thread. The cheaper options were measured and
    left off (BENCHMARKS.md, "Code figures"): libavcodec's slice or frame threads cost more CPU
    in all (the stream has one slice; frame threads add a frame of delay), ``flags2=fast`` gives
    the same pictures at the same cost, and ``skip_loop_filter`` (a quarter of the decode of a
    deblocked stream) drifts: the references differ from the encoder's, by 3 dB within a 2 s
    GOP and 10 dB within 10 s (browsers send one keyframe a minute or less) even in a tile drawn
    at half size."""

    def __init__(self, codec: str) -> None:
        name = {"H264": "h264", "VP8": "vp8"}.get(codec.upper())
        if name is None:
            raise ValueError(f"the mixer cannot decode {codec}")
        self.codec = codec.upper()
        self._ctx: Any = av.CodecContext.create(name, "r")
        self._ctx.thread_count = 1
        self.errors = 0

    def decode(self, data: bytes) -> list[Any]:
        try:
            return list(self._ctx.decode(av.Packet(data)))
        except av.FFmpegError:
            self.errors += 1
            return []


class AudioDecoder:
    """Opus -> 48 kHz mono float32 (whatever the anchor's channel layout).

    libopus downmixes to mono and hands out float samples itself when asked: called directly
    (``direct``, where ``opus.load`` finds it) one foreign call per packet; through PyAV the
    usual frame is read in place (no conversion) and the resampler is kept for anything else
    a decoder may hand back."""

    def __init__(self, *, direct: bool = True) -> None:
        lib = opus.load() if direct else None
        self._direct = opus.Decoder(lib, RATE) if lib is not None else None
        self.errors = 0
        if self._direct is not None:
            return
        self._ctx: Any = av.CodecContext.create("libopus", "r")
        self._ctx.sample_rate = RATE
        self._ctx.layout = "mono"
        self._ctx.options = {"request_sample_fmt": "flt"}
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        self._flat = False  # a frame came out as 48 kHz mono float: so do the rest

    @property
    def direct(self) -> bool:
        return self._direct is not None

    def decode(self, data: bytes) -> Samples:
        if self._direct is not None:
            pcm = self._direct.decode(data) if data else None  # b"": libopus would conceal
            if pcm is None:
                self.errors += 1
                return np.zeros(0, np.float32)
            return pcm
        try:
            frames = self._ctx.decode(av.Packet(data))
        except av.FFmpegError:
            self.errors += 1
            return np.zeros(0, np.float32)
        if self._flat and len(frames) == 1:  # the usual case, without the checks below
            frame = frames[0]
            return np.frombuffer(frame.planes[0], np.float32, frame.samples)
        out: list[Samples] = []
        for frame in frames:
            if (
                frame.sample_rate == RATE
                and frame.format.name == "flt"
                and frame.layout.nb_channels == 1
            ):
                self._flat = True
                # a view of the frame's buffer (it keeps the frame alive); the caller copies
                out.append(np.frombuffer(frame.planes[0], np.float32, frame.samples))
                continue
            for r in self._resampler.resample(frame):
                out.append(r.to_ndarray().reshape(-1).astype(np.float32))
        if len(out) == 1:
            return out[0]
        return np.concatenate(out) if out else np.zeros(0, np.float32)
