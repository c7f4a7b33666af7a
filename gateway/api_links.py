"""Cross-room links API (``gateway.stage.links``): ``/v1/rooms/{room}/links``.

The operator key may link any anchor into any room. An anchor of ``room`` (its token; a token
of another room, or a stage guest's: 403) links into its own room only, and only with the
guest room's consent: ``guest_token``, an anchor token of the guest's room (its host agreeing
to the PK; private rooms too), else 403. A request for a room whose program is on another node
is sent there with a 307 (the client repeats it; the operator key rides ``X-API-Key``, which clients
keep across origins, where they drop ``Authorization``).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from relay.auth.access import AccessPolicy
from relay.cluster.node import TemporaryRedirect
from relay.errors import Forbidden
from relay.http.common import check_room
from relay.http.problems import problem_responses

from .stage.links import LinkService, RoomLink


class LinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    room: str = Field(min_length=1, max_length=128, description="the guest anchor's own room")
    anchor_id: str = Field(min_length=1, max_length=64, description="its anchor session id")
    guest_token: str | None = Field(
        None,
        max_length=4096,
        description="an anchor token of the guest's room: its consent (not needed with the "
        "operator key)",
    )


class LinkView(BaseModel):
    room: str
    guest_room: str
    anchor_id: str
    via: str  # "local" (the guest's room is on this node) or the node it is pulled from
    started_at: float
    frames: int  # frames of the guest's stream received over the link


def link_view(link: RoomLink) -> LinkView:
    return LinkView(
        room=link.room,
        guest_room=link.guest.room,
        anchor_id=link.guest.id,
        via=link.via,
        started_at=round(link.started_at, 3),
        frames=link.guest.hub.stats.frames_in,
    )


def room_actor(access: AccessPolicy, operator_key: str) -> Callable[..., Awaitable[str]]:
    """FastAPI dependency: ``operator`` for the operator key, else the subject of an anchor
    token of the path's room (not a stage guest's)."""

    async def check(
        room: str,
        authorization: str | None = Header(default=None),
        x_api_key: str | None = Header(default=None),
    ) -> str:
        check_room(room)
        given = x_api_key
        if given is None and authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if given and secrets.compare_digest(given.encode(), operator_key.encode()):
            return OPERATOR
        grant = access.authorize(room, "anchor", authorization)
        if grant.stage_guest:
            raise Forbidden("a stage guest may not link rooms")
        return grant.subject

    return check


OPERATOR = "operator"


def links_router(links: LinkService, access: AccessPolicy, operator_key: str) -> APIRouter:
    actor = room_actor(access, operator_key)
    router = APIRouter(
        prefix="/v1",
        tags=["stage"],
        dependencies=[Depends(actor)],
        responses=problem_responses(401, 403, 404, 409, 422),
    )

    def consent(who: str, body: LinkCreate) -> None:
        """An anchor links another room's anchor only with that room's consent."""
        if who == OPERATOR:
            return
        if body.guest_token is None:
            raise Forbidden(
                "linking another room's anchor needs guest_token: an anchor token of that room"
            )
        grant = access.authorize(body.room, "anchor", f"Bearer {body.guest_token}")
        if grant.stage_guest:
            raise Forbidden("a stage guest's token cannot consent for its room")

    async def here(request: Request, room: str) -> None:
        url = await links.elsewhere(room)
        if url is not None:
            target = url.rstrip("/") + request.url.path
            if request.url.query:
                target += "?" + request.url.query
            raise TemporaryRedirect(target)

    @router.post("/rooms/{room}/links", status_code=201, response_model=LinkView)
    async def create_link(
        request: Request,
        room: str,
        body: LinkCreate,
        response: Response,
        who: str = Depends(actor),
    ) -> LinkView:
        """Put anchor ``anchor_id`` of room ``room`` (the body's) on this room's stage: its
        tile in the program (place it with the layout API under its anchor id) and its audio in
        the mix. 404: no such live anchor; 409: already linked here, the stage is full, or
        this room is not live; 307: this room is on another node."""
        check_room(body.room)
        consent(who, body)
        await here(request, room)
        link = await links.link(room, body.room, body.anchor_id)
        response.headers["Location"] = f"/v1/rooms/{room}/links/{link.guest.id}"
        return link_view(link)

    @router.get("/rooms/{room}/links", response_model=list[LinkView])
    async def list_links(request: Request, room: str) -> list[LinkView]:
        await here(request, room)
        return [link_view(link) for link in links.list(room)]

    @router.get("/rooms/{room}/links/{anchor_id}", response_model=LinkView)
    async def get_link(request: Request, room: str, anchor_id: str) -> LinkView:
        await here(request, room)
        return link_view(links.get(room, anchor_id))

    @router.delete("/rooms/{room}/links/{anchor_id}", status_code=204)
    async def delete_link(request: Request, room: str, anchor_id: str) -> Response:
        """End the link: the tile leaves the program, the pull of the guest is closed."""
        await here(request, room)
        await links.unlink(room, anchor_id)
        return Response(status_code=204)

    return router
