"""Synthetic WHIP anchor and WHEP viewer clients: smoke tests, the test suite and benchmarks.

The anchor sends a moving test pattern whose frames carry stamps (``relay.media.stamps``) and a sine
tone; the viewer reads the stamps back, so any deployment can be probed end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import math
import time
from collections.abc import Sequence
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

from relay.media.stamps import draw_stamp, read_stamp, wall_ms
from relay.rtc.adapter import install_ingest_tap
from relay.rtc.peer import close_quietly, rtc_configuration

VIDEO_CLOCK = 90000


class StampedVideoTrack(VideoStreamTrack):
    """A moving pattern with a stamp (frame counter, send time) drawn into each frame.

    ``grain`` adds that much (0..grain) changing noise to the luma, as a camera's sensor does: the
    bare pattern is so predictable that an encoder asked for 1.5 Mbps CBR spends half of it on
    filler data (x264 at ultrafast: 790 kbps of picture); with ``grain=4`` all of it is picture.
    """

    GRAIN_FRAMES = 16

    def __init__(self, width: int = 1280, height: int = 720, fps: int = 30, grain: int = 0) -> None:
        super().__init__()
        if not 0 <= grain <= 38:
            raise ValueError("grain must be within 0..38")
        self.width, self.height, self.fps = width, height, fps
        x = np.arange(width * 2)
        pattern = (128 + 60 * np.sin(x / 23.0) + 30 * np.sin(x / 7.0)).astype(np.uint8)
        self._pattern = np.tile(pattern, (height, 1))
        rng = np.random.default_rng(7)
        self._grain = [
            rng.integers(0, grain + 1, (height, width), dtype=np.uint8)
            for _ in range(self.GRAIN_FRAMES if grain > 0 else 0)
        ]  # the pattern stays within 38..218: adding up to 37 never wraps
        self._yuv = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
        self._t0: float | None = None
        self.counter = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + self.counter / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        shift = (self.counter * 8) % self.width
        view = self._pattern[:, shift : shift + self.width]
        if self._grain:
            np.add(view, self._grain[self.counter % len(self._grain)], out=self._yuv[: self.height])
        else:
            self._yuv[: self.height] = view
        draw_stamp(self._yuv[: self.height], self.counter, wall_ms(time.time()))
        frame = av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = self.counter * (VIDEO_CLOCK // self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.counter += 1
        return frame


class ToneAudioTrack(AudioStreamTrack):
    """A continuous sine tone, 20 ms frames of 48 kHz mono s16."""

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._samples = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        rate, n = 48000, 960
        if self._t0 is None:
            self._t0 = time.monotonic()
        delay = self._t0 + self._samples / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(n) + self._samples) / rate
        wave = (self.amplitude * 32767 * np.sin(2 * math.pi * self.frequency * t)).astype("<i2")
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, rate)
        self._samples += n
        return frame


@dataclass(eq=False)
class Publisher:
    pc: RTCPeerConnection
    location: str
    client: httpx.AsyncClient
    headers: dict[str, str]
    video: StampedVideoTrack | None

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


async def whip_publish(
    base_url: str,
    room: str,
    token: str | None,
    *,
    video: StampedVideoTrack | None = None,
    audio: MediaStreamTrack | None = None,
    video_codec: str | None = None,
    timeout: float = 10.0,
) -> Publisher:
    """Push the given tracks to ``/whip/{room}``; raises httpx.HTTPStatusError on refusal."""
    pc = RTCPeerConnection(rtc_configuration(()))
    client = httpx.AsyncClient(base_url=base_url, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if video is not None:
            _prefer(pc.addTransceiver(video, direction="sendonly"), video_codec)
        if audio is not None:
            pc.addTransceiver(audio, direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        resp = await client.post(
            f"/whip/{room}",
            content=pc.localDescription.sdp,
            headers={**headers, "Content-Type": "application/sdp"},
        )
        resp.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
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
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
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
) -> Viewer:
    """Pull ``/whep/{room}``; decode=False counts frames without decoding (cheap, for load)."""
    pc = RTCPeerConnection(rtc_configuration(()))
    client = httpx.AsyncClient(base_url=base_url, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        transceivers = [pc.addTransceiver(kind, direction="recvonly") for kind in kinds]
        await pc.setLocalDescription(await pc.createOffer())
        joined = time.monotonic()
        resp = await client.post(
            f"/whep/{room}",
            content=pc.localDescription.sdp,
            headers={**headers, "Content-Type": "application/sdp"},
        )
        resp.raise_for_status()
        viewer = Viewer(pc, resp.headers["location"], client, headers, joined)
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
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
