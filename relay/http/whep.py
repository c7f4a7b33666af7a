"""WHEP audience endpoint: POST a recvonly offer -> 201 sendonly answer; HEAD tells liveness."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from relay.auth.access import AccessPolicy
from relay.auth.tokens import Role
from relay.auth.turn import IceDirectory
from relay.errors import BadRequest, NotFound
from relay.http.common import SDP, check_room, read_limited, require_content_type
from relay.http.problems import WHEP_HEAD_ERRORS, WHEP_POST_ERRORS, problem_responses
from relay.http.sessions import add_session_routes, created_response
from relay.media.stream_key import StreamKey
from relay.rtc.sdp import decode_body
from relay.rtc.viewers import ViewerService, ViewerSession


async def whep_stream_key(
    room: str,
    rendition: str | None = Query(default=None, max_length=16),
    anchor: str | None = Query(default=None, max_length=64),
    mixminus: str | None = Query(default=None, max_length=64),
    layer: str | None = Query(default=None, max_length=16),
) -> StreamKey:
    """FastAPI dependency: the stream a WHEP request asks for. ``?rendition=NAME`` (or
    ``?layer=NAME``) picks a rendition (e.g. 360p) and keeps the viewer on it; without one the
    viewer gets the program and its layer follows its link (``?layer=auto`` says so).
    ``?anchor=ID`` one anchor's own stream, ``?mixminus=ID`` one anchor's mix-minus. Routes and
    gates that depend on it share one parse per request."""
    if layer is not None and layer != "auto" and rendition is None:  # rendition= wins
        rendition = layer
    return StreamKey(room, rendition, anchor, mixminus)


class LayerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: str = Field(max_length=16)
    """A layer's (rendition's) name to stay on, or ``auto`` to follow the link again."""


class LayerState(BaseModel):
    layer: str | None  # the layer the viewer receives (None: not on a ladder)
    pinned: str | None
    mode: str  # "pinned" or "auto"
    switches_up: int
    switches_down: int


WhepStreamKey = Annotated[StreamKey, Depends(whep_stream_key)]


def layer_state(session: ViewerSession) -> LayerState:
    return LayerState(
        layer=session.layer,
        pinned=session.pin,
        mode="auto" if session.pin is None else "pinned",
        switches_up=session.step_ups,
        switches_down=session.fallbacks,
    )


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

    def check_selection(key: StreamKey) -> None:
        if key.mixminus is not None:
            if not mixminus:
                raise NotFound("this node serves no mix-minus feeds; ask the origin")
            if key.rendition is not None or key.anchor is not None:
                raise BadRequest("mixminus goes alone, without rendition or anchor")

    @router.head(
        "/whep/{room}",
        responses={200: {"content": {SDP: {}}, "description": "Live"}, **WHEP_HEAD_ERRORS},
    )
    async def whep_head(
        key: WhepStreamKey,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
    ) -> Response:
        """200 when the room (rendition, anchor, mix-minus) is live, 409 + Retry-After when
        not. Needs the credential a POST needs: liveness of a private room is its secret."""
        room = key.room
        check_room(room)
        role: Role = "anchor" if key.mixminus is not None else "audience"
        grant = access.authorize(room, role, authorization, access_token)
        check_selection(key)
        service.live_hub(key, grant.subject)
        return Response(status_code=200, headers={"Content-Type": SDP, "Accept-Post": SDP})

    @router.post(
        "/whep/{room}",
        status_code=201,
        responses={201: {"content": {SDP: {}}, "description": "SDP answer"}, **WHEP_POST_ERRORS},
    )
    async def whep_post(
        request: Request,
        key: WhepStreamKey,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
    ) -> Response:
        """Watch the room's program; ``?rendition=NAME`` picks a rendition (e.g. 360p),
        ``?anchor=ID`` one anchor's own stream (co-hosts pulling each other), ``?mixminus=ID``
        (audio only, with that anchor's own anchor token) everyone else's audio mixed for it."""
        room = key.room
        check_room(room)
        role: Role = "anchor" if key.mixminus is not None else "audience"
        grant = access.authorize(room, role, authorization, access_token)
        check_selection(key)
        require_content_type(request, SDP)
        text = decode_body(await read_limited(request, max_sdp_bytes), max_bytes=max_sdp_bytes)
        # the offer is checked at the join's turn (ViewerService.open): in a flash crowd a
        # POST costs little until then, so the line forms before the loop is held
        session = await service.open(key, text, None, grant)
        links = ice.links(grant.subject, time.time())
        answer = session.pc.localDescription.sdp
        return created_response("/whep", room, session.id, session.etag, answer, links)

    @router.put(
        "/whep/{room}/{session_id}/layer",
        response_model=LayerState,
        responses=problem_responses(400, 401, 403, 404, 413, 422),
    )
    async def whep_put_layer(
        room: str,
        session_id: str,
        body: LayerRequest,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
    ) -> LayerState:
        """Pin the viewer's layer (``{"layer": "360p"}``) or let it follow the link again
        (``{"layer": "auto"}``); the viewer's own token or the operator key."""
        session = service.get(room, session_id)
        access.authorize_session(room, ("audience",), session.grant, authorization, access_token)
        service.set_pin(session, None if body.layer == "auto" else body.layer)
        return layer_state(session)

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
