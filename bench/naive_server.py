"""The naive baseline: an aiortc server that relays DECODED frames with ``MediaRelay``.

Every viewer's RTCRtpSender re-encodes the anchor's picture (one encoder per viewer), which is what
DESIGN.md puts at a tenth of a core or more per viewer. Only here to be compared with the gateway;
WHIP-like ``POST /whip/{room}`` and ``POST /whep/{room}`` with SDP bodies, so
``gateway.synthetic``'s clients work against it unchanged. Loopback only, no ICE servers.

    python -m bench.naive_server --host 127.0.0.1 --port 8090 --codec H264
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from fastapi import FastAPI, Request, Response

from relay.rtc.peer import close_quietly, rtc_configuration

SDP = "application/sdp"


@dataclass(eq=False)
class Room:
    relay: MediaRelay = field(default_factory=MediaRelay)
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)
    drain: MediaBlackhole = field(default_factory=MediaBlackhole)


@dataclass(eq=False)
class NaiveServer:
    codec: str
    rooms: dict[str, Room] = field(default_factory=dict)
    pcs: dict[str, RTCPeerConnection] = field(default_factory=dict)
    viewer_ids: set[str] = field(default_factory=set)

    def _track_prefs(self, kind: str) -> list[RTCRtpCodecCapability]:
        caps = RTCRtpSender.getCapabilities(kind).codecs
        if kind != "video":
            return list(caps)
        chosen = [c for c in caps if c.name.lower() == self.codec.lower()]
        return chosen + [c for c in caps if c.name.lower() == "rtx"]

    def _keep(self, pc: RTCPeerConnection) -> str:
        sid = secrets.token_urlsafe(12)
        self.pcs[sid] = pc

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.pcs.pop(sid, None)
                await close_quietly(pc)

        return sid

    async def publish(self, room_name: str, offer: str) -> tuple[str, str]:
        room = self.rooms[room_name] = Room()
        pc = RTCPeerConnection(rtc_configuration(()))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            room.tracks[track.kind] = track
            # Keep the decoded source drained even with no viewer, as any real server must.
            room.drain.addTrack(room.relay.subscribe(track, buffered=False))

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await room.drain.start()
        return self._keep(pc), pc.localDescription.sdp

    async def watch(self, room_name: str, offer: str) -> tuple[str, str] | None:
        room = self.rooms.get(room_name)
        if room is None or not room.tracks:
            return None
        pc = RTCPeerConnection(rtc_configuration(()))
        for kind, track in room.tracks.items():
            transceiver = pc.addTransceiver(
                room.relay.subscribe(track, buffered=False), direction="sendonly"
            )
            transceiver.setCodecPreferences(self._track_prefs(kind))
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        sid = self._keep(pc)
        self.viewer_ids.add(sid)
        return sid, pc.localDescription.sdp

    def viewer_count(self) -> int:
        return sum(1 for sid in self.viewer_ids if sid in self.pcs)

    async def close(self, sid: str) -> bool:
        pc = self.pcs.pop(sid, None)
        if pc is None:
            return False
        await close_quietly(pc)
        return True

    async def shutdown(self) -> None:
        await asyncio.gather(*(close_quietly(pc) for pc in self.pcs.values()))
        self.pcs.clear()
        for room in self.rooms.values():
            with contextlib.suppress(Exception):
                await room.drain.stop()


def create_app(codec: str) -> FastAPI:
    server = NaiveServer(codec)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await server.shutdown()

    app = FastAPI(lifespan=lifespan)

    def created(prefix: str, room: str, sid: str, answer: str) -> Response:
        headers = {"Location": f"{prefix}/{room}/{sid}"}
        return Response(answer, status_code=201, media_type=SDP, headers=headers)

    @app.post("/whip/{room}")
    async def whip(room: str, request: Request) -> Response:
        sid, answer = await server.publish(room, (await request.body()).decode())
        return created("/whip", room, sid, answer)

    @app.head("/whep/{room}")
    async def whep_head(room: str) -> Response:
        live = room in server.rooms and bool(server.rooms[room].tracks)
        return Response(status_code=200 if live else 409, media_type=SDP)

    @app.post("/whep/{room}")
    async def whep(room: str, request: Request) -> Response:
        result = await server.watch(room, (await request.body()).decode())
        if result is None:
            return Response("not live", status_code=409, headers={"Retry-After": "1"})
        sid, answer = result
        return created("/whep", room, sid, answer)

    @app.delete("/whip/{room}/{sid}")
    @app.delete("/whep/{room}/{sid}")
    async def delete(room: str, sid: str) -> Response:
        return Response(status_code=200 if await server.close(sid) else 404)

    @app.get("/readyz")
    async def readyz() -> dict[str, object]:
        return {"status": "ready", "viewers": server.viewer_count()}

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "peers": len(server.pcs)}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--codec", default="H264", choices=["H264", "VP8"])
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.codec), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
