"""Synthetic WHIP anchor and WHEP viewer clients: smoke tests, the test suite and benchmarks.

The anchor sends a moving test pattern whose frames carry stamps (``relay.media.stamps``) and a sine
tone; the viewer reads the stamps back, so any deployment can be probed end to end. The other
synthetic tracks live here too: a solid colour (co-hosting tests read it back by position) and a
pre-encoded clip looped without an encoder (load anchors of the benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import (
    AudioStreamTrack,
    MediaStreamError,
    MediaStreamTrack,
    VideoStreamTrack,
)

from gateway.mixer.compositor import rgb_to_yuv
from relay.media.frames import EncodedFrame
from relay.media.stamps import draw_stamp, read_stamp, wall_ms
from relay.rtc.adapter import install_ingest_tap, install_prepacked_sender, packetize_h264
from relay.rtc.peer import close_quietly, rtc_configuration

VIDEO_CLOCK = 90000


class FrameClock:
    """Paces a synthetic track in real time: frame ``n`` is due ``n / rate`` seconds after the
    first one was asked for."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._t0: float | None = None

    async def wait(self, n: int) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        delay = self._t0 + n / self.rate - now
        if delay > 0:
            await asyncio.sleep(delay)


def moving_pattern(width: int, height: int) -> np.ndarray:
    """Luma of the test pattern, twice as wide as the picture: frame ``n`` shows the ``width``
    columns from ``(n * 8) % width``."""
    x = np.arange(width * 2)
    row = (128 + 60 * np.sin(x / 23.0) + 30 * np.sin(x / 7.0)).astype(np.uint8)
    return np.tile(row, (height, 1))


def yuv_frame(yuv: np.ndarray, n: int, fps: int) -> av.VideoFrame:
    """Frame ``n`` of a ``fps`` track from a yuv420p buffer, stamped on the 90 kHz clock."""
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.pts = n * (VIDEO_CLOCK // fps)
    frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
    return frame


class StampedVideoTrack(VideoStreamTrack):
    """A moving pattern with a stamp (frame counter, send time) drawn into each frame.

    ``grain`` adds that much (0..grain) changing noise to the luma, as a camera's sensor does: the
    bare pattern is so predictable that an encoder asked for 1.5 Mbps CBR spends about half of it
    on filler data (BENCHMARKS.md, "Code figures"); with ``grain=4`` all of it is picture.
    """

    GRAIN_FRAMES = 16

    def __init__(self, width: int = 1280, height: int = 720, fps: int = 30, grain: int = 0) -> None:
        super().__init__()
        if not 0 <= grain <= 38:
            raise ValueError("grain must be within 0..38")
        self.width, self.height, self.fps = width, height, fps
        self._pattern = moving_pattern(width, height)
        rng = np.random.default_rng(7)
        self._grain = [
            rng.integers(0, grain + 1, (height, width), dtype=np.uint8)
            for _ in range(self.GRAIN_FRAMES if grain > 0 else 0)
        ]  # the pattern stays within 38..218: adding up to 37 never wraps
        self._yuv = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
        self._clock = FrameClock(fps)
        self.counter = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._clock.wait(self.counter)
        shift = (self.counter * 8) % self.width
        view = self._pattern[:, shift : shift + self.width]
        if self._grain:
            np.add(view, self._grain[self.counter % len(self._grain)], out=self._yuv[: self.height])
        else:
            self._yuv[: self.height] = view
        draw_stamp(self._yuv[: self.height], self.counter, wall_ms(time.time()))
        frame = yuv_frame(self._yuv, self.counter, self.fps)
        self.counter += 1
        return frame


class ToneAudioTrack(AudioStreamTrack):
    """A continuous sine tone, 20 ms frames of 48 kHz mono s16."""

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._samples = 0
        self._clock = FrameClock(48000)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        rate, n = 48000, 960
        await self._clock.wait(self._samples)
        t = (np.arange(n) + self._samples) / rate
        wave = (self.amplitude * 32767 * np.sin(2 * math.pi * self.frequency * t)).astype("<i2")
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, rate)
        self._samples += n
        return frame


class SolidColourTrack(VideoStreamTrack):
    """One colour, every frame: the mixer's tests find each anchor's tile by it."""

    def __init__(
        self, rgb: tuple[int, int, int], width: int = 160, height: int = 90, fps: int = 15
    ) -> None:
        super().__init__()
        y, u, v = rgb_to_yuv(rgb)
        self._yuv = np.empty((height * 3 // 2, width), np.uint8)
        self._yuv[:height] = y
        q = height // 4
        self._yuv[height : height + q] = u
        self._yuv[height + q :] = v
        self.fps = fps
        self._clock = FrameClock(fps)
        self._n = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._clock.wait(self._n)
        frame = yuv_frame(self._yuv, self._n, self.fps)
        self._n += 1
        return frame


def encoded_clip(
    width: int, height: int, frames: int = 90, gop: int = 30
) -> list[tuple[bytes, bool]]:
    """The moving pattern with a moving square, encoded once with x264 ultrafast (GOP ``gop``,
    ~1.5 Mbps): what a load anchor loops. Its encoder is fixed here, not the mixer's
    ``VideoEncoder``, so tuning the mixer's encoder never changes a benchmark's input."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "level": "31",
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1",
    }
    ctx.profile = "Baseline"
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.bit_rate = 1_500_000
    ctx.framerate = fractions.Fraction(30, 1)
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.thread_count = 1
    pattern = moving_pattern(width, height)
    out: list[tuple[bytes, bool]] = []
    for i in range(frames):
        yuv = np.full((height * 3 // 2, width), 128, np.uint8)
        shift = (i * 8) % width
        yuv[:height] = pattern[:, shift : shift + width]
        bx, by = (i * 12) % (width - 160), (i * 7) % (height - 160)
        yuv[by : by + 160, bx : bx + 160] = 235  # a moving square
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i
        frame.pict_type = av.video.frame.PictureType.I if i % gop == 0 else 0
        out += [(bytes(p), bool(p.is_keyframe)) for p in ctx.encode(frame)]
    return out


class LoopTrack(MediaStreamTrack):
    """Yields a pre-encoded H264 clip as EncodedFrames at 30 fps, looping (the clip's length is a
    multiple of its GOP, so the loop starts on a keyframe). Send it with ``prepacked=True``."""

    kind = "video"

    def __init__(self, clip: list[tuple[bytes, bool]]) -> None:
        super().__init__()
        self._clip = [(tuple(packetize_h264(d)), d, k) for d, k in clip]
        self._clock = FrameClock(30)
        self._n = 0

    async def recv(self) -> EncodedFrame:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        await self._clock.wait(self._n)
        payloads, data, key = self._clip[self._n % len(self._clip)]
        frame = EncodedFrame("video", "H264", self._n * 3000, payloads, data, key, time.monotonic())
        self._n += 1
        return frame


@dataclass(eq=False)
class Publisher:
    pc: RTCPeerConnection
    location: str
    client: httpx.AsyncClient
    headers: dict[str, str]
    video: MediaStreamTrack | None

    async def close(self, *, delete: bool = True) -> None:
        if delete:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.delete(self.location, headers=self.headers)
        await close_quietly(self.pc)
        await self.client.aclose()


def _prefer(transceiver: Any, codec: str | None) -> None:
    if codec is None:
        return
    caps = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    chosen = [c for c in caps if c.name.lower() == codec.lower()]
    chosen += [c for c in caps if c.name.lower() == "rtx"]
    transceiver.setCodecPreferences(chosen)


async def offer_answer(
    pc: RTCPeerConnection,
    client: httpx.AsyncClient,
    path: str,
    headers: dict[str, str],
    transform: Callable[[str], str] | None = None,
) -> httpx.Response:
    """The WHIP/WHEP exchange: POST ``pc``'s offer (made here unless the caller already set it;
    rewritten by ``transform`` on the way) to ``path``, apply the answer; the response carries
    the session's Location. Raises httpx.HTTPStatusError on refusal."""
    if pc.localDescription is None:
        await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    resp = await client.post(
        path,
        content=offer if transform is None else transform(offer),
        headers={**headers, "Content-Type": "application/sdp"},
    )
    resp.raise_for_status()
    await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    return resp


async def whip_publish(
    base_url: str,
    room: str,
    token: str | None,
    *,
    video: MediaStreamTrack | None = None,
    audio: MediaStreamTrack | None = None,
    video_codec: str | None = None,
    prepacked: bool = False,
    timeout: float = 10.0,
) -> Publisher:
    """Push the given tracks to ``/whip/{room}``; raises httpx.HTTPStatusError on refusal.
    ``prepacked``: the video track yields EncodedFrames (``LoopTrack``), sent without encoding."""
    pc = RTCPeerConnection(rtc_configuration(()))
    client = httpx.AsyncClient(base_url=base_url, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if video is not None:
            transceiver = pc.addTransceiver(video, direction="sendonly")
            _prefer(transceiver, video_codec)
            if prepacked:  # keyframes come on the clip's GOP: PLIs are ignored
                install_prepacked_sender(transceiver.sender, lambda: None)
        if audio is not None:
            pc.addTransceiver(audio, direction="sendonly")
        resp = await offer_answer(pc, client, f"/whip/{room}", headers)
    except BaseException:
        await close_quietly(pc)
        await client.aclose()
        raise
    return Publisher(pc, resp.headers["location"], client, headers, video)


@dataclass(slots=True)
class VideoSample:
    counter: int
    latency_ms: float
    received_at: float


@dataclass(eq=False)
class Viewer:
    """A WHEP viewer that decodes (stamps, audio level) or only counts frames."""

    pc: RTCPeerConnection
    location: str
    client: httpx.AsyncClient
    headers: dict[str, str]
    joined_at: float
    samples: list[VideoSample] = field(default_factory=list)
    video_frames: int = 0
    audio_frames: int = 0
    audio_rms: list[float] = field(default_factory=list)
    first_frame_at: float | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    on_frame: Callable[[float], None] | None = None  # each decoded video frame's monotonic time

    @property
    def time_to_first_frame(self) -> float | None:
        return None if self.first_frame_at is None else self.first_frame_at - self.joined_at

    async def close(self, *, delete: bool = True) -> None:
        if delete:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.delete(self.location, headers=self.headers)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await close_quietly(self.pc)
        await self.client.aclose()

    def _video(self, frame: av.VideoFrame) -> None:
        now = time.time()
        mono = time.monotonic()
        if self.first_frame_at is None:
            self.first_frame_at = mono
        if self.on_frame is not None:
            self.on_frame(mono)
        self.video_frames += 1
        plane = frame.planes[0]
        luma = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
        luma = luma[:, : frame.width]
        stamp = read_stamp(luma)
        if stamp is not None:
            latency = (wall_ms(now) - stamp.sent_ms) % (1 << 40) + (now * 1000) % 1
            self.samples.append(VideoSample(stamp.counter, latency, now))

    def _audio(self, frame: av.AudioFrame) -> None:
        self.audio_frames += 1
        pcm = frame.to_ndarray().astype(np.float64)
        self.audio_rms.append(float(np.sqrt(np.mean(pcm**2))) if pcm.size else 0.0)

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    self._video(frame)
                elif isinstance(frame, av.AudioFrame):
                    self._audio(frame)
        except MediaStreamError:
            pass
        finally:
            self.ended.set()

    def _count_packets(self, kind: str, packet: Any, codec: Any) -> None:
        if kind == "video":
            if packet.marker:
                self.video_frames += 1
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
        else:
            self.audio_frames += 1


async def whep_watch(
    base_url: str,
    room: str,
    token: str | None = None,
    *,
    kinds: Sequence[str] = ("video", "audio"),
    decode: bool = True,
    timeout: float = 10.0,
    on_frame: Callable[[float], None] | None = None,
    offer_transform: Callable[[str], str] | None = None,
) -> Viewer:
    """Pull ``/whep/{room}``; decode=False counts frames without decoding (cheap, for load);
    ``on_frame`` sees the time of each decoded video frame; ``offer_transform`` rewrites the
    offer sent (e.g. to offer what aiortc does not, for the server's sake)."""
    pc = RTCPeerConnection(rtc_configuration(()))
    client = httpx.AsyncClient(base_url=base_url, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        transceivers = [pc.addTransceiver(kind, direction="recvonly") for kind in kinds]
        await pc.setLocalDescription(await pc.createOffer())
        joined = time.monotonic()  # time to first frame counts from the POST
        resp = await offer_answer(pc, client, f"/whep/{room}", headers, offer_transform)
        viewer = Viewer(pc, resp.headers["location"], client, headers, joined, on_frame=on_frame)
        for t in transceivers:
            if decode:
                viewer.tasks.append(asyncio.create_task(viewer._consume(t.receiver.track)))
            else:
                install_ingest_tap(t.receiver, functools.partial(viewer._count_packets, t.kind))
    except BaseException:
        await close_quietly(pc)
        await client.aclose()
        raise
    return viewer
