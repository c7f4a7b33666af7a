"""Who is on a room's stage, for its participants (the call page, co-hosts):
``GET /v1/rooms/{room}/participants`` (an anchor token of the room, or the operator key), and
the same list pushed to the room's message channel as a ``stage.participants`` command whenever
an anchor joins or leaves or a guest is linked in or out, so that pages update at once instead
of polling (the channel reaches sockets on every node through the message bus).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from relay.auth.access import AccessPolicy
from relay.http.problems import problem_responses
from relay.messages.bus import BusError
from relay.messages.service import RoomChannels

from .api_links import room_actor
from .stage.room import RoomService

log = logging.getLogger(__name__)

PARTICIPANTS_COMMAND = "stage.participants"
NOTICE_EVENTS = frozenset({"anchor.joined", "anchor.left", "link.started", "link.ended"})


class Participant(BaseModel):
    anchor_id: str
    subject: str  # the anchor token's subject ("" for a guest pulled from another node)
    room: str  # its own room (a guest's differs)
    guest: bool = False


class Participants(BaseModel):
    room: str
    live: bool
    participants: list[Participant]


def participants(rooms: RoomService, room: str) -> Participants:
    """The room's live anchors in join order, then its linked guests."""
    program = rooms.rooms.get(room)
    if program is None:
        return Participants(room=room, live=False, participants=[])
    own = [
        Participant(anchor_id=a.id, subject=a.subject, room=room) for a in program.anchors.values()
    ]
    guests = [
        Participant(anchor_id=g.id, subject="", room=getattr(g, "room", ""), guest=True)
        for g in program.guests.values()
    ]
    return Participants(room=room, live=bool(own), participants=[*own, *guests])


class ParticipantNotices:
    """An event sink (beside the webhooks): on a stage change, the room's list goes to its
    channel. Sent from a task, so the list is the one current when it goes out; a burst of
    changes of one room sends one list."""

    def __init__(self, rooms: RoomService, channels: RoomChannels) -> None:
        self._rooms = rooms
        self._channels = channels
        self._due: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        room = data.get("room")
        if kind not in NOTICE_EVENTS or not isinstance(room, str) or room in self._due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._due.add(room)
        task = loop.create_task(self._send(room), name=f"participants-{room}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, room: str) -> None:
        await asyncio.sleep(0)  # the rest of this change (a director update) first
        self._due.discard(room)
        view = participants(self._rooms, room)
        try:
            await self._channels.command(room, PARTICIPANTS_COMMAND, view.model_dump())
        except BusError as exc:
            log.warning("participants of room %s not sent: %s", room, exc)


def call_router(rooms: RoomService, access: AccessPolicy, operator_key: str) -> APIRouter:
    router = APIRouter(
        prefix="/v1",
        tags=["stage"],
        dependencies=[Depends(room_actor(access, operator_key))],
        responses=problem_responses(401, 403),
    )

    @router.get("/rooms/{room}/participants", response_model=Participants)
    async def get_participants(room: str) -> Participants:
        """Who is on the stage now (each pulls the others' own streams, ``?anchor=ID``); the
        room's channel carries every change as a ``stage.participants`` command."""
        return participants(rooms, room)

    return router
