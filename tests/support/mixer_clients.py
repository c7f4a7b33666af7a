"""Test clients for co-hosting: anchors sending a solid colour and a sine tone, and a WHEP viewer
that keeps its latest picture (RGB) and the last second of its audio for an FFT."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import time
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

from gateway.mixer.compositor import rgb_to_yuv
from relay.rtc.peer import close_quietly, rtc_configuration

RGB = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


class SolidColourTrack(VideoStreamTrack):
    def __init__(
        self, rgb: tuple[int, int, int], width: int = 160, height: int = 90, fps: int = 15
    ):
        super().__init__()
        y, u, v = rgb_to_yuv(rgb)
        self._yuv = np.empty((height * 3 // 2, width), np.uint8)
        self._yuv[:height] = y
        q = height // 4
        self._yuv[height : height + q] = u
        self._yuv[height + q :] = v
        self.fps = fps
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        delay = self._t0 + self._n / self.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")
        frame.pts = self._n * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._n += 1
        return frame


@dataclass(eq=False)
class ProgramViewer:
    pc: RTCPeerConnection
    client: httpx.AsyncClient
    location: str
    picture: Any = None  # latest RGB ndarray
    picture_at: float = 0.0
    video_frames: int = 0
    audio: collections.deque[np.ndarray] = field(
        default_factory=lambda: collections.deque(maxlen=50)
    )
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    self.picture = frame.to_ndarray(format="rgb24")
                    self.picture_at = time.monotonic()
                    self.video_frames += 1
                else:
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                    self.audio.append(pcm.mean(axis=1))
        except MediaStreamError:
            pass
        finally:
            self.ended.set()

    def colour_at(self, fx: float, fy: float) -> str | None:
        """The named colour at a point given as fractions of the picture (None: none of them)."""
        pic = self.picture
        if pic is None:
            return None
        h, w, _ = pic.shape
        y, x = int(fy * h), int(fx * w)
        patch = pic[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3].reshape(-1, 3).mean(axis=0)
        for name, ref in RGB.items():
            if np.abs(patch - np.array(ref)).max() < 60:
                return name
        return None

    def spectrum(self, seconds: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
        chunks = list(self.audio)
        x = np.concatenate(chunks) if chunks else np.zeros(1)
        x = x[-int(48000 * seconds) :].astype(np.float64)
        mag = np.abs(np.fft.rfft(x * np.hanning(x.size)))
        return np.fft.rfftfreq(x.size, 1 / 48000), mag

    def tones(self, freqs: list[float]) -> dict[float, float]:
        """Each frequency's peak relative to the strongest of them."""
        f, mag = self.spectrum()
        peaks = {fr: float(mag[(f > fr - 15) & (f < fr + 15)].max(initial=0.0)) for fr in freqs}
        top = max(peaks.values()) or 1.0
        return {fr: p / top for fr, p in peaks.items()}

    async def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self.client.delete(self.location)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await close_quietly(self.pc)
        await self.client.aclose()


async def watch_program(
    base_url: str,
    path: str,
    *,
    token: str | None = None,
    kinds: tuple[str, ...] = ("video", "audio"),
) -> ProgramViewer:
    """A WHEP viewer of ``path`` (e.g. ``/whep/ROOM?mixminus=ID`` with ``kinds=("audio",)`` and
    the anchor's token); its DELETE carries the same token."""
    pc = RTCPeerConnection(rtc_configuration(()))
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.AsyncClient(base_url=base_url, timeout=10, headers=auth)
    try:
        transceivers = [pc.addTransceiver(k, direction="recvonly") for k in kinds]
        await pc.setLocalDescription(await pc.createOffer())
        resp = await client.post(
            path,
            content=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        )
        resp.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    except BaseException:
        await close_quietly(pc)
        await client.aclose()
        raise
    viewer = ProgramViewer(pc, client, resp.headers["location"])
    for t in transceivers:
        viewer.tasks.append(asyncio.create_task(viewer._consume(t.receiver.track)))
    return viewer
