"""A viewer that plays as the watch page does, for the failover tests: it POSTs at the origin
(following 307s) and POSTs there again when its frames stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription

from gateway.synthetic import Viewer
from relay.rtc.peer import close_quietly, rtc_configuration


@dataclass(eq=False)
class RetryingViewer:
    """Plays as the watch page does: POSTs at the origin (following 307s), and when frames stop
    for ``stall`` s, POSTs there again; every node that served it is noted."""

    origin: str
    room: str
    stall: float = 0.3
    viewers: list[Viewer] = field(default_factory=list)
    served_by: list[str] = field(default_factory=list)
    tried: list[tuple[float, str]] = field(default_factory=list)  # (time, node URL) per 307
    task: asyncio.Task[None] | None = None

    def samples(self) -> list[float]:
        return sorted(s.received_at for v in self.viewers for s in v.samples)

    def frames_after(self, t: float) -> list[float]:
        return sorted(s.received_at for v in self.viewers for s in v.samples if s.received_at > t)

    async def run(self) -> None:
        while True:
            viewer = await self._join()
            self.viewers.append(viewer)
            self.served_by.append(viewer.location.split("/whep/")[0])
            started = time.time()
            while True:
                await asyncio.sleep(0.05)
                last = viewer.samples[-1].received_at if viewer.samples else started
                if time.time() - last > self.stall + (0 if viewer.samples else 1.5):
                    break
            for t in viewer.tasks:
                t.cancel()
            await close_quietly(viewer.pc, 1.0)

    async def _join(self) -> Viewer:
        pc = RTCPeerConnection(rtc_configuration(()))
        transceiver = pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        client = httpx.AsyncClient(timeout=2.0)
        joined = time.monotonic()
        while True:
            url = f"{self.origin}/whep/{self.room}"
            try:
                for _ in range(4):
                    resp = await client.post(
                        url,
                        content=pc.localDescription.sdp,
                        headers={"Content-Type": "application/sdp"},
                    )
                    if resp.status_code != 307:
                        break
                    url = urljoin(url, resp.headers["location"])
                    self.tried.append((time.time(), url.split("/whep/")[0]))
                if resp.status_code == 201:
                    break
            except (httpx.HTTPError, OSError):
                pass
            await asyncio.sleep(0.1)
        viewer = Viewer(pc, urljoin(url, resp.headers["location"]), client, {}, joined)
        await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
        viewer.tasks.append(asyncio.create_task(viewer._consume(transceiver.receiver.track)))
        return viewer

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for v in self.viewers:
            await v.close(delete=False)
