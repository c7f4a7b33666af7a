"""A WHEP viewer for the co-hosting tests: it keeps its latest picture (RGB) and the last second
of its audio, to find each anchor's colour (gateway.synthetic.SolidColourTrack) by position and
its tone by FFT."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.synthetic import offer_answer
from relay.rtc.peer import close_quietly, rtc_configuration

RGB = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}


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
        resp = await offer_answer(pc, client, path, {})
    except BaseException:
        await close_quietly(pc)
        await client.aclose()
        raise
    viewer = ProgramViewer(pc, client, resp.headers["location"])
    for t in transceivers:
        viewer.tasks.append(asyncio.create_task(viewer._consume(t.receiver.track)))
    return viewer
