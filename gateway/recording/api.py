"""Operator routes of the recordings (under ``/v1``): start/stop a room's recording, list,
download (HTTP range requests), VOD playlist, delete."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from relay.errors import Conflict, NotFound
from relay.http.common import check_room
from relay.http.problems import problem_responses

from .files import check_recording_id, parse_part_name, vod_playlist
from .recorder import RecordingMeta
from .service import RecordingService, RoomRecorder

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}
SEGMENT_CACHE = "private, max-age=3600"


def read_part(path: Path, offset: int, size: int) -> bytes:
    """Bytes ``offset``..``offset+size`` of a recording; 404 unless all of them are there."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(size)
    except FileNotFoundError:
        raise NotFound("no such recording") from None
    if len(data) != size:
        raise NotFound("no such segment")
    return data


class RecordingStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchors: bool = False
    """Also record each anchor's own stream (a file per anchor session) beside the program."""


class RecordingView(BaseModel):
    id: str
    room: str
    anchor: str | None
    """The anchor session whose own stream this is; null: the room's program."""
    state: str
    format: str
    codecs: dict[str, str]
    started_at: float
    ended_at: float | None
    duration_s: float | None
    size: int
    reason: str | None
    file_url: str
    playlist_url: str | None


class RoomRecordingView(BaseModel):
    room: str
    recording: bool
    current: RecordingView | None
    files: list[str]
    """Ids of the files this recording made so far (a new program starts a new file)."""


def media_name(meta: RecordingMeta) -> str:
    """The file's URL name (a player's HLS demuxer wants a media extension)."""
    return f"media.{meta.format}"


def recording_view(meta: RecordingMeta) -> RecordingView:
    base = f"/v1/recordings/{meta.id}"
    return RecordingView(
        id=meta.id,
        room=meta.room,
        anchor=meta.anchor,
        state=meta.state,
        format=meta.format,
        codecs=meta.codecs,
        started_at=meta.started_at,
        ended_at=meta.ended_at,
        duration_s=meta.duration_s,
        size=meta.size,
        reason=meta.reason,
        file_url=f"{base}/{media_name(meta)}",
        playlist_url=f"{base}/index.m3u8" if meta.format == "mp4" else None,
    )


def room_view(rec: RoomRecorder, recording: bool) -> RoomRecordingView:
    current = rec.current.meta if rec.current is not None else None
    return RoomRecordingView(
        room=rec.room,
        recording=recording,
        current=recording_view(current) if current is not None else None,
        files=list(rec.files),
    )


def recording_router(service: RecordingService) -> APIRouter:
    router = APIRouter(tags=["recordings"])

    @router.post(
        "/rooms/{room}/recording",
        status_code=201,
        response_model=RoomRecordingView,
        responses=problem_responses(507),
    )
    async def start_recording(
        room: str, response: Response, body: RecordingStart | None = None
    ) -> RoomRecordingView:
        """Record the room's program (now if live, else from when it goes live), and with
        ``anchors`` each anchor's own stream; 507 when the disk has less than
        ``recording.min_free_mb`` free."""
        check_room(room)
        rec = await service.start(room, anchors=body is not None and body.anchors)
        response.headers["Location"] = f"/v1/rooms/{room}/recording"
        return room_view(rec, True)

    @router.get("/rooms/{room}/recording", response_model=RoomRecordingView)
    async def get_recording(room: str) -> RoomRecordingView:
        check_room(room)
        return room_view(service.recording_of(room), True)

    @router.delete("/rooms/{room}/recording", response_model=RoomRecordingView)
    async def stop_recording(room: str) -> RoomRecordingView:
        """Stop: the file is closed (playable) and ``recording.completed`` is sent."""
        check_room(room)
        return room_view(await service.stop(room), False)

    @router.get("/recordings", response_model=list[RecordingView])
    async def list_recordings(room: str | None = Query(None)) -> list[RecordingView]:
        if room is not None:
            check_room(room)
        return [recording_view(m) for m in await asyncio.to_thread(service.list, room)]

    @router.get("/recordings/{recording_id}", response_model=RecordingView)
    async def get_recording_file(recording_id: str) -> RecordingView:
        check_recording_id(recording_id)
        return recording_view(await asyncio.to_thread(service.get, recording_id))

    @router.get(
        "/recordings/{recording_id}/index.m3u8",
        responses={200: {"content": {PLAYLIST_TYPE: {}}, "description": "VOD playlist"}},
    )
    async def playlist(recording_id: str) -> Response:
        """HLS VOD playlist over the file (segments named by byte range); while the file is
        being written, an EVENT playlist of what is written so far (no ENDLIST)."""
        check_recording_id(recording_id)
        meta = await asyncio.to_thread(service.get, recording_id)
        if meta.format != "mp4":
            raise Conflict("only MP4 recordings (H264) have an HLS playlist")
        try:
            index = await asyncio.to_thread(service.index, meta)
        except FileNotFoundError:
            raise NotFound("no such recording") from None
        text = vod_playlist(index, ended=meta.state == "complete")
        return Response(text, media_type=PLAYLIST_TYPE, headers={"Cache-Control": "no-cache"})

    @router.head("/recordings/{recording_id}/{name}", include_in_schema=False)
    @router.get(
        "/recordings/{recording_id}/{name}",
        responses={
            200: {"content": {t: {} for t in MEDIA_TYPES.values()}, "description": "Media"},
            206: {"content": {t: {} for t in MEDIA_TYPES.values()}, "description": "Range"},
            416: {"description": "Range not satisfiable"},
        },
    )
    async def download(recording_id: str, name: str) -> Response:
        """The media file, ``media.mp4`` (``media.webm`` for VP8); ``Range: bytes=...`` answers
        206 with those bytes. ``OFFSET-SIZE.m4s``: a segment the VOD playlist names."""
        check_recording_id(recording_id)
        meta = await asyncio.to_thread(service.get, recording_id)
        path = service.media_path(meta)
        part = parse_part_name(name)
        if part is not None and meta.format == "mp4":
            data = await asyncio.to_thread(read_part, path, *part)
            return Response(data, media_type="video/mp4", headers={"Cache-Control": SEGMENT_CACHE})
        if name != media_name(meta) or not await asyncio.to_thread(path.is_file):
            raise NotFound("no such recording")
        return FileResponse(
            path, media_type=MEDIA_TYPES.get(meta.format, "application/octet-stream")
        )

    @router.delete("/recordings/{recording_id}", status_code=204)
    async def delete_recording(recording_id: str) -> Response:
        check_recording_id(recording_id)
        await asyncio.to_thread(service.delete, recording_id)
        return Response(status_code=204)

    return router
