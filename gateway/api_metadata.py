"""Operator API for timed metadata in a room's video (H.264 SEI, ``relay.media.sei``): a line of
text or JSON a player reads in the very frame it was sent with."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from relay.errors import Conflict, NotFound, Unprocessable
from relay.http.common import check_room
from relay.media.sei import MAX_PAYLOAD, STAGECAST_UUID, sei_nal

from .stage.table import StageTable


class MetadataBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = Field(min_length=1, max_length=MAX_PAYLOAD)
    """UTF-8 text (e.g. JSON) of at most 1000 bytes."""


class MetadataSent(BaseModel):
    room: str
    renditions: list[str]
    bytes: int
    uuid: str  # the SEI message's UUID, hex: how players tell stagecast's messages apart


def metadata_router(stages: StageTable) -> APIRouter:
    router = APIRouter(tags=["stage"])

    @router.post("/rooms/{room}/metadata", status_code=202, response_model=MetadataSent)
    async def send_metadata(room: str, body: MetadataBody) -> MetadataSent:
        """Put ``data`` into the next video frame of each rendition of the room's program that
        someone takes, as an H.264 SEI user-data-unregistered message; viewers on edges, the
        recording and the CDN bridge get it in the same frame. 409 for a VP8 program or one
        without video."""
        check_room(room)
        stage = stages.get(room)
        if stage is None or stage.hub is None or not stage.renditions:
            raise NotFound(f"room {room!r} is not live")
        payload = body.data.encode()
        if len(payload) > MAX_PAYLOAD:
            raise Unprocessable(f"data may have at most {MAX_PAYLOAD} bytes of UTF-8")
        try:
            sei_nal(payload)  # escaped, it must still fit one packet
        except ValueError as exc:
            raise Unprocessable(str(exc)) from exc
        # a rendition nobody takes is not encoded (its messages would go out late): skipped
        taken = [name for name, hub in stage.renditions.items() if hub.viewer_count]
        names = taken or list(stage.renditions)[:1]
        try:
            for name in names:
                stage.renditions[name].add_sei(payload)
        except ValueError as exc:
            raise Conflict(str(exc)) from exc
        return MetadataSent(
            room=room,
            renditions=names,
            bytes=len(payload),
            uuid=STAGECAST_UUID.hex(),
        )

    return router
