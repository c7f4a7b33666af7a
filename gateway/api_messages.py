"""Operator API of the room channels: system messages and commands, mutes, channel figures."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay.errors import ServiceUnavailable
from relay.http.common import check_room
from relay.messages.bus import BusError
from relay.messages.envelope import COMMAND_NAME
from relay.messages.service import RoomChannels


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OperatorMessage(_Body):
    type: Literal["system", "command"] = "system"
    text: str = Field("", max_length=2000)
    name: str = Field("", max_length=64)
    data: Any = None

    @model_validator(mode="after")
    def _shape(self) -> OperatorMessage:
        if self.type == "system" and not self.text.strip():
            raise ValueError("a system message needs a text")
        if self.type == "command" and not COMMAND_NAME.match(self.name):
            raise ValueError("a command needs a name of 1-64 of A-Z a-z 0-9 _ . : -")
        if len(json.dumps(self.data)) > 16384:
            raise ValueError("command data may have at most 16 KiB")
        return self


class MuteBody(_Body):
    seconds: float = Field(600, gt=0, le=30 * 86400)


class MuteView(BaseModel):
    room: str
    subject: str
    until: float


class ChannelView(BaseModel):
    room: str
    sockets: int  # on this node
    likes: int
    mutes: dict[str, float]


def messages_api_router(channels: RoomChannels) -> APIRouter:
    router = APIRouter(tags=["messages"])

    @router.post("/rooms/{room}/messages", status_code=202)
    async def send(room: str, body: OperatorMessage) -> Response:
        """A system message (or a command) to every socket of the room, on every node."""
        check_room(room)
        try:
            if body.type == "system":
                payload = await channels.system(room, body.text.strip())
            else:
                payload = await channels.command(room, body.name, body.data)
        except BusError as exc:
            raise ServiceUnavailable(f"message bus unavailable: {exc}") from exc
        return Response(payload, status_code=202, media_type="application/json")

    @router.put("/rooms/{room}/mutes/{subject}", response_model=MuteView)
    async def mute(room: str, subject: str, body: MuteBody) -> MuteView:
        """The subject's chat and likes are refused in the room on every node until then."""
        check_room(room)
        try:
            until = await channels.mute(room, subject, body.seconds)
        except BusError as exc:
            raise ServiceUnavailable(f"message bus unavailable: {exc}") from exc
        return MuteView(room=room, subject=subject, until=until)

    @router.delete("/rooms/{room}/mutes/{subject}", status_code=204)
    async def unmute(room: str, subject: str) -> Response:
        check_room(room)
        try:
            await channels.mute(room, subject, 0)
        except BusError as exc:
            raise ServiceUnavailable(f"message bus unavailable: {exc}") from exc
        return Response(status_code=204)

    @router.get("/rooms/{room}/channel", response_model=ChannelView)
    async def channel(room: str) -> ChannelView:
        check_room(room)
        try:
            likes = await channels.bus.likes(room)
        except BusError:
            likes = channels.totals.get(room, 0)
        return ChannelView(
            room=room,
            sockets=channels.count(room),
            likes=likes,
            mutes=channels.mutes.listed(room, time.time()),
        )

    return router
