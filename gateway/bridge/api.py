"""HTTP side of the bridges: the operator routes (under ``/v1``) and the public HLS files."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from relay.auth.access import AccessPolicy
from relay.errors import BadRequest, NotFound, ServiceUnavailable
from relay.http.common import check_room

from .service import BridgeService
from .state import BridgeState

if TYPE_CHECKING:
    from .bridge import Bridge

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
SEGMENT_TYPE = "video/mp4"
PLAYLIST_CACHE = "no-cache"
SEGMENT_CACHE = "public, max-age=3600"  # file names are never reused (per-bridge prefix)


class BridgeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["rtmp", "hls"]
    url: str | None = Field(None, max_length=2048)
    """RTMP target, ``rtmp://`` or ``rtmps://`` (the stream key is never shown back)."""


class BridgeView(BaseModel):
    id: str
    room: str
    kind: Literal["rtmp", "hls"]
    state: BridgeState
    reason: str | None
    """Why the last ffmpeg run ended (from its stderr), while retrying or failed."""
    url: str | None
    """RTMP target with its stream key hidden."""
    playlist_url: str | None
    since: float
    created_at: float
    runs: int
    restarts: int
    pid: int | None
    frames_in: int
    frames_dropped: int
    keyframe_requests: int
    bytes_out: int
    slate_parts: int
    """HLS: slate parts listed while nothing fed the playlist (anchor away, ffmpeg restarting)."""


def bridge_view(bridge: Bridge) -> BridgeView:
    st = bridge.stats
    return BridgeView(
        id=bridge.id,
        room=bridge.room,
        kind=bridge.kind,
        state=bridge.state,
        reason=bridge.reason,
        url=bridge.display_url,
        playlist_url=f"/hls/{bridge.room}/index.m3u8" if bridge.kind == "hls" else None,
        since=bridge.since,
        created_at=bridge.created_at,
        runs=st.runs,
        restarts=st.restarts,
        pid=bridge.pid,
        frames_in=st.frames_in,
        frames_dropped=st.frames_dropped,
        keyframe_requests=st.keyframe_requests,
        bytes_out=st.bytes_out,
        slate_parts=bridge.hls.slate_parts if bridge.hls is not None else 0,
    )


def bridge_router(service: BridgeService) -> APIRouter:
    """Operator routes; include under the ``/v1`` router (which checks the operator key)."""
    router = APIRouter(tags=["bridges"])

    @router.post("/rooms/{room}/bridges", status_code=201, response_model=BridgeView)
    async def create_bridge(room: str, body: BridgeCreate, response: Response) -> BridgeView:
        """Push the room's program over RTMP, or write it as (LL-)HLS; waits while not live."""
        bridge = await service.create(room, body.kind, body.url)
        response.headers["Location"] = f"/v1/rooms/{room}/bridges/{bridge.id}"
        return bridge_view(bridge)

    @router.get("/rooms/{room}/bridges", response_model=list[BridgeView])
    async def list_bridges(room: str) -> list[BridgeView]:
        return [bridge_view(b) for b in service.in_room(room)]

    @router.get("/rooms/{room}/bridges/{bridge_id}", response_model=BridgeView)
    async def get_bridge(room: str, bridge_id: str) -> BridgeView:
        return bridge_view(service.get(room, bridge_id))

    @router.delete("/rooms/{room}/bridges/{bridge_id}", status_code=204)
    async def delete_bridge(room: str, bridge_id: str) -> Response:
        """Stops the bridge (its ffmpeg ends) and removes its HLS files."""
        await service.delete(room, bridge_id)
        return Response(status_code=204)

    @router.delete("/rooms/{room}/bridges", status_code=204)
    async def delete_room_bridges(room: str) -> Response:
        await service.stop_room(room)
        return Response(status_code=204)

    return router


def hls_router(service: BridgeService, access: AccessPolicy) -> APIRouter:
    """``/hls/{room}/index.m3u8`` (LL-HLS blocking reload: ``_HLS_msn``, ``_HLS_part``) and its
    init segments, segments and parts. The playlist is an audience resource (token if the room
    is private); media files have unguessable names."""
    router = APIRouter(tags=["hls"])

    @router.head("/hls/{room}/index.m3u8", include_in_schema=False)
    @router.get(
        "/hls/{room}/index.m3u8",
        response_class=Response,
        responses={200: {"content": {PLAYLIST_TYPE: {}}, "description": "Playlist"}},
    )
    async def playlist(
        room: str,
        msn: int | None = Query(None, alias="_HLS_msn", ge=0),
        part: int | None = Query(None, alias="_HLS_part", ge=0),
        token: str | None = Query(None),
        authorization: str | None = Header(None),
    ) -> Response:
        check_room(room)
        access.authorize(room, "audience", authorization, token)
        out = service.hls(room)
        if out is None:
            raise NotFound(f"room {room!r} has no HLS bridge")
        packager = out.packager
        if part is not None and msn is None:
            raise BadRequest("_HLS_part needs _HLS_msn")
        if msn is not None:
            if msn > packager.next_msn + 1:
                raise BadRequest("_HLS_msn is too far in the future")
            wait = 3.0 * packager.target_duration
            if not await out.wait_for(lambda: packager.reached(msn, part), wait):
                raise ServiceUnavailable("the requested part did not arrive", retry_after=1)
        text = out.playlist_text
        if text is None:
            raise NotFound("no HLS segments yet", headers={"Retry-After": "1"})
        # HEAD: the same headers as GET, Content-Length included (RFC 9110 §9.3.2); the
        # server sends no body for HEAD
        return Response(
            text.encode(), media_type=PLAYLIST_TYPE, headers={"Cache-Control": PLAYLIST_CACHE}
        )

    @router.head("/hls/{room}/{name}", include_in_schema=False)
    @router.get(
        "/hls/{room}/{name}",
        response_class=Response,
        responses={200: {"content": {SEGMENT_TYPE: {}}, "description": "Media file"}},
    )
    async def media(room: str, name: str, request: Request) -> Response:
        check_room(room)
        out = service.hls(room)
        if out is None:  # the same answer as a wrong name: no token here to tell a room's state
            raise NotFound("no such HLS file")
        path = out.file(name)
        if path is None and out.is_pending(name):  # preload hint: answer when it is written
            await out.wait_for(
                lambda: out.file(name) is not None or not out.is_pending(name),
                3.0 * out.packager.part_target + 1.0,
            )
            path = out.file(name)
        if path is None:
            raise NotFound("no such HLS file")
        headers = {"Cache-Control": SEGMENT_CACHE}
        try:
            if request.method == "HEAD":  # GET's headers, Content-Length included, no body
                size = await asyncio.to_thread(lambda: path.stat().st_size)
                headers["Content-Length"] = str(size)
                return Response(b"", media_type=SEGMENT_TYPE, headers=headers)
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound("no such HLS file") from None
        return Response(data, media_type=SEGMENT_TYPE, headers=headers)

    return router
