"""The stage API, for the three parties of a raised hand:

- a viewer (its audience token, or none where the audience may be anonymous) raises a hand
  (``POST /rooms/{room}/stage/requests``) and gets its request's ``key``; with that key
  (``X-Stage-Key``) it long-polls its request (``GET .../{id}?after=VERSION&wait=S``), which
  carries the guest's anchor token once approved, and leaves (``DELETE .../{id}``);
- the room's anchors (their anchor token; not a guest's) and operators (the operator key)
  list requests and the stage (``GET /rooms/{room}/stage``: anchors, guests, viewers),
  approve, refuse and remove.
"""

from __future__ import annotations

import secrets
from typing import Literal

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from relay.auth.access import AccessPolicy
from relay.auth.tokens import LINK_SUBJECT_PREFIX, bearer_token
from relay.errors import Conflict, Forbidden, NotFound, Unauthorized
from relay.http.common import check_room
from relay.http.problems import problem_responses
from relay.http.ratelimit import client_key
from relay.rtc.viewers import ViewerService

from .anchors import AnchorService
from .guests import StageGuests
from .settings import Settings
from .stage.guests import StageRequest
from .stage.room import RoomService
from .stage.table import StageTable

STAGE_KEY_HEADER = "X-Stage-Key"
VIEWER_TOKEN_TTL = 300  # the co-host pulls' audience token the stage view hands anchors


class HandBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=40, pattern=r"^[^\x00-\x1f\x7f]+$")


class StageRequestView(BaseModel):
    id: str
    room: str
    name: str
    subject: str  # the guest's anchor subject
    state: Literal[
        "pending", "approved", "refused", "withdrawn", "joined", "left", "removed", "expired"
    ]
    version: int
    created_at: float
    changed_at: float
    decided_by: str | None = None
    anchor_id: str | None = None  # the guest's WHIP session while on stage
    reason: str | None = None
    key: str | None = None  # only in the POST's answer: the requester's secret
    token: str | None = None  # only to the requester, approved or on stage: its anchor token
    token_expires_at: float | None = None
    whip_url: str | None = None
    mixminus_url: str | None = None  # only on stage


class StageAnchorView(BaseModel):
    id: str
    subject: str
    guest: bool
    name: str | None = None  # a guest's display name
    request_id: str | None = None
    muted: list[str]


class StageView(BaseModel):
    room: str
    live: bool
    viewers: int  # the program's audience on this node (not co-host pulls, mix-minus, edges)
    max_anchors: int
    anchors: list[StageAnchorView]  # join order
    requests: list[StageRequestView]  # open ones: pending, approved, on stage
    viewer_token: str  # an audience token of this room, for pulling co-hosts (?anchor=ID)


def stage_router(
    settings: Settings,
    stages: StageTable,
    rooms: RoomService,
    anchors: AnchorService,
    viewers: ViewerService,
    access: AccessPolicy,
    guests: StageGuests,
    operator_key: str,
) -> APIRouter:
    router = APIRouter(
        tags=["stage"], responses=problem_responses(400, 401, 403, 404, 409, 413, 422)
    )
    base = settings.base_url

    def view(r: StageRequest, *, requester: bool = False) -> StageRequestView:
        out = StageRequestView(
            id=r.id,
            room=r.room,
            name=r.name,
            subject=r.subject,
            state=r.state,
            version=r.version,
            created_at=r.created_at,
            changed_at=r.changed_at,
            decided_by=r.decided_by,
            anchor_id=r.anchor_id,
            reason=r.reason,
        )
        if requester and (token := guests.token_of(r)) is not None:
            out.token = token
            out.token_expires_at = r.token_expires_at
            out.whip_url = f"{base}/whip/{r.room}"
            if r.anchor_id is not None:
                out.mixminus_url = f"{base}/whep/{r.room}?mixminus={r.anchor_id}"
        return out

    def audience(room: str) -> int:
        """The program's viewers on this node: not co-hosts' pulls, mix-minus or edge links."""
        return sum(
            1
            for s in viewers.sessions.values()
            if s.room == room
            and s.hub.key.anchor is None
            and s.hub.key.mixminus is None
            and not s.grant.subject.startswith(LINK_SUBJECT_PREFIX)
        )

    def room_or_404(room: str) -> None:
        check_room(room)
        if stages.get(room) is None:
            raise NotFound(f"no room {room!r}")

    def staff(room: str, request: Request) -> str:
        """Who may decide: ``operator`` (the key, as ``/v1`` takes it: Bearer or X-API-Key),
        or an anchor of the room (its subject); a guest's anchor token may not (403)."""
        authorization = request.headers.get("authorization")
        query_token = request.query_params.get("access_token")
        # the operator key only from a header, as /v1 takes it: a URL ends up in logs
        header = bearer_token(authorization) or request.headers.get("x-api-key")
        if header is not None and secrets.compare_digest(header.encode(), operator_key.encode()):
            return "operator"
        if header is None and not query_token:
            raise Unauthorized("an anchor token of the room or the operator key is required")
        grant = access.authorize(room, "anchor", authorization, query_token)
        if grant.stage_guest or guests.desk.is_guest(room, grant.subject):
            raise Forbidden("a guest may not decide stage requests")
        return grant.subject

    def own(room: str, request_id: str, key: str | None) -> StageRequest | None:
        """The request when ``key`` is its requester's; None without a key; 403 on a wrong one."""
        request = guests.desk.get(room, request_id)
        if key is None:
            return None
        if not secrets.compare_digest(key.encode(), request.key.encode()):
            raise Forbidden("wrong stage key for this request")
        return request

    @router.post(
        "/rooms/{room}/stage/requests",
        status_code=201,
        response_model=StageRequestView,
        responses=problem_responses(429),
    )
    async def raise_hand(
        room: str,
        body: HandBody,
        request: Request,
        response: Response,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
    ) -> StageRequestView:
        """A viewer asks to join the stage; the answer's ``key`` is its secret for the rest."""
        room_or_404(room)
        grant = access.authorize(room, "audience", authorization, access_token)
        address = client_key(request.client.host if request.client else "unknown")
        rate_key = f"addr:{address}" if grant.anonymous else f"sub:{grant.subject}"
        requester = "anonymous" if grant.anonymous else grant.subject
        hand = guests.ask(room, body.name.strip(), requester, rate_key)
        response.headers["Location"] = f"/rooms/{room}/stage/requests/{hand.id}"
        out = view(hand, requester=True)
        out.key = hand.key
        return out

    @router.get("/rooms/{room}/stage/requests", response_model=list[StageRequestView])
    async def list_requests(room: str, request: Request) -> list[StageRequestView]:
        """Every request the room has (finished ones for a few minutes)."""
        room_or_404(room)
        staff(room, request)
        guests.sweep()
        return [view(r) for r in guests.desk.requests(room)]

    @router.get("/rooms/{room}/stage/requests/{request_id}", response_model=StageRequestView)
    async def get_request(
        room: str,
        request_id: str,
        request: Request,
        after: int = Query(-1, ge=-1),
        wait: float = Query(0, ge=0, le=30),
        x_stage_key: str | None = Header(default=None),
    ) -> StageRequestView:
        """The requester (``X-Stage-Key``) long-polls: answered once ``version`` > ``after``
        or after ``wait`` s; approved, it carries the guest's anchor token. Staff (who poll
        ``/stage``) are answered at once."""
        room_or_404(room)
        mine = own(room, request_id, x_stage_key)
        if mine is None:
            staff(room, request)
            return view(guests.desk.get(room, request_id))
        return view(await guests.wait(room, request_id, after, wait), requester=True)

    async def decide(
        room: str, request_id: str, approve: bool, request: Request
    ) -> StageRequestView:
        room_or_404(room)
        who = staff(room, request)
        guests.sweep()
        # anchors, linked anchors of other rooms and seats already held for guests
        seats = rooms.seats_used(room) + guests.desk.seats_taken(room)
        if approve and seats >= settings.stage.max_anchors:
            raise Conflict(f"the stage of {room!r} is full ({settings.stage.max_anchors})")
        return view(guests.decide(room, request_id, approve, who))

    @router.post(
        "/rooms/{room}/stage/requests/{request_id}/approve", response_model=StageRequestView
    )
    async def approve(room: str, request_id: str, request: Request) -> StageRequestView:
        """Mints the guest's anchor token (``stage.guest_token_ttl``); 409 unless pending or
        when the stage is full."""
        return await decide(room, request_id, True, request)

    @router.post(
        "/rooms/{room}/stage/requests/{request_id}/refuse", response_model=StageRequestView
    )
    async def refuse(room: str, request_id: str, request: Request) -> StageRequestView:
        return await decide(room, request_id, False, request)

    @router.delete("/rooms/{room}/stage/requests/{request_id}", response_model=StageRequestView)
    async def leave(
        room: str,
        request_id: str,
        request: Request,
        x_stage_key: str | None = Header(default=None),
    ) -> StageRequestView:
        """The requester withdraws or steps down, or an anchor/operator removes the guest:
        its WHIP session ends and its token is revoked. 409 once finished."""
        room_or_404(room)
        mine = own(room, request_id, x_stage_key)
        by = None if mine is not None else staff(room, request)
        return view(await guests.leave(room, request_id, by), requester=mine is not None)

    @router.get("/rooms/{room}/stage", response_model=StageView)
    async def get_stage(room: str, request: Request) -> StageView:
        """What an anchor's page shows: the anchors on stage (guests named), open requests,
        viewers, and an audience token to pull co-hosts' own streams (``?anchor=ID``)."""
        room_or_404(room)
        staff(room, request)
        guests.sweep()
        stage = stages.get(room)
        assert stage is not None
        sessions = {s.id: s for s in anchors.in_room(room)}
        on_stage: list[StageAnchorView] = []
        for aid in stage.anchor_ids:
            s = sessions.get(aid)
            if s is None:
                continue
            r = guests.desk.by_subject(s.subject)
            guest = r is not None and r.room == room
            on_stage.append(
                StageAnchorView(
                    id=aid,
                    subject=s.subject,
                    guest=guest,
                    name=r.name if r is not None and guest else None,
                    request_id=r.id if r is not None and guest else None,
                    muted=sorted(s.hub.muted),
                )
            )
        viewer_token = guests.viewer_token(room, VIEWER_TOKEN_TTL)
        return StageView(
            room=room,
            live=stage.hub is not None and not stage.hub.closed.is_set(),
            viewers=audience(room),
            max_anchors=settings.stage.max_anchors,
            anchors=on_stage,
            requests=[view(r) for r in guests.desk.requests(room) if r.open],
            viewer_token=viewer_token,
        )

    @router.get("/rooms/{room}/stage/guests", response_model=list[StageRequestView])
    async def list_guests(room: str, request: Request) -> list[StageRequestView]:
        """Approved guests and guests on stage."""
        room_or_404(room)
        staff(room, request)
        guests.sweep()
        return [view(r) for r in guests.desk.requests(room) if r.state in ("approved", "joined")]

    return router
