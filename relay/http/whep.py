"""WHEP audience endpoint: POST a recvonly offer -> 201 sendonly answer; HEAD tells liveness."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

from fastapi import APIRouter, Header, Query, Request, Response

from relay.auth.access import AccessPolicy
from relay.auth.tokens import Role
from relay.auth.turn import IceDirectory
from relay.errors import BadRequest, NotFound
from relay.http.common import SDP, check_room, read_limited, require_content_type
from relay.http.problems import WHEP_HEAD_ERRORS, WHEP_POST_ERRORS
from relay.http.sessions import add_session_routes, created_response
from relay.rtc.sdp import check_offer, decode_body
from relay.rtc.viewers import ViewerService


@dataclass(frozen=True, slots=True)
class HubSelection:
    """What a WHEP request asks for beyond its room: a rendition of the program
    (``?rendition=360p``), one anchor's own stream (``?anchor=ID``) or one anchor's mix-minus
    (``?mixminus=ID``: everyone else's audio, for that anchor). The service's hub lookup reads it
    (``current_selection``) while the request opens its session. ``subject`` is the subject of
    the token the request (a POST or a HEAD) came with."""

    rendition: str | None = None
    anchor: str | None = None
    mixminus: str | None = None
    subject: str | None = None


_NONE = HubSelection()
_selection: ContextVar[HubSelection | None] = ContextVar("whep_selection", default=None)


def current_selection() -> HubSelection:
    return _selection.get() or _NONE


def whep_router(
    service: ViewerService,
    access: AccessPolicy,
    *,
    max_sdp_bytes: int = 64 * 1024,
    ice: IceDirectory | None = None,
    mixminus: bool = False,
) -> APIRouter:
    """``mixminus``: this node serves ``?mixminus=ID`` (the origin, where the anchors are); pulls
    of a mix-minus need an anchor token for the room. Elsewhere such a request gets 404.
    ``ice``: the ICE servers (with a fresh TURN credential for the viewer's subject) in the 201's
    and the endpoint OPTIONS' Link headers."""
    ice = ice or IceDirectory()
    router = APIRouter(tags=["whep"])

    def selection(
        rendition: str | None, anchor: str | None, mix: str | None, subject: str | None
    ) -> HubSelection:
        if mix is not None:
            if not mixminus:
                raise NotFound("this node serves no mix-minus feeds; ask the origin")
            if rendition is not None or anchor is not None:
                raise BadRequest("mixminus goes alone, without rendition or anchor")
        return HubSelection(rendition, anchor, mix, subject)

    @router.head(
        "/whep/{room}",
        responses={200: {"content": {SDP: {}}, "description": "Live"}, **WHEP_HEAD_ERRORS},
    )
    async def whep_head(
        room: str,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
        rendition: str | None = Query(default=None, max_length=16),
        anchor: str | None = Query(default=None, max_length=64),
        mixminus_id: str | None = Query(default=None, alias="mixminus", max_length=64),
    ) -> Response:
        """200 when the room (rendition, anchor, mix-minus) is live, 409 + Retry-After when
        not. Needs the credential a POST needs: liveness of a private room is its secret."""
        check_room(room)
        role: Role = "anchor" if mixminus_id is not None else "audience"
        grant = access.authorize(room, role, authorization, access_token)
        token = _selection.set(selection(rendition, anchor, mixminus_id, grant.subject))
        try:
            service.live_hub(room)
        finally:
            _selection.reset(token)
        return Response(status_code=200, headers={"Content-Type": SDP, "Accept-Post": SDP})

    @router.post(
        "/whep/{room}",
        status_code=201,
        responses={201: {"content": {SDP: {}}, "description": "SDP answer"}, **WHEP_POST_ERRORS},
    )
    async def whep_post(
        request: Request,
        room: str,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
        rendition: str | None = Query(default=None, max_length=16),
        anchor: str | None = Query(default=None, max_length=64),
        mixminus_id: str | None = Query(default=None, alias="mixminus", max_length=64),
    ) -> Response:
        """Watch the room's program; ``?rendition=NAME`` picks a rendition (e.g. 360p),
        ``?anchor=ID`` one anchor's own stream (co-hosts pulling each other), ``?mixminus=ID``
        (audio only, with that anchor's own anchor token) everyone else's audio mixed for it."""
        check_room(room)
        role: Role = "anchor" if mixminus_id is not None else "audience"
        grant = access.authorize(room, role, authorization, access_token)
        sel = selection(rendition, anchor, mixminus_id, grant.subject)
        require_content_type(request, SDP)
        text = decode_body(await read_limited(request, max_sdp_bytes), max_bytes=max_sdp_bytes)
        summary = check_offer(text, "view")
        token = _selection.set(sel)
        try:
            session = await service.open(room, text, summary, grant)
        finally:
            _selection.reset(token)
        links = ice.links(grant.subject, time.time())
        answer = session.pc.localDescription.sdp
        return created_response("/whep", room, session.id, session.etag, answer, links)

    add_session_routes(
        router,
        "/whep",
        ("audience", "anchor") if mixminus else "audience",
        service,
        access,
        post_methods="POST, HEAD, OPTIONS",
        max_sdp_bytes=max_sdp_bytes,
        ice=ice,
    )
    return router
