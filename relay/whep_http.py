"""WHEP audience endpoint: POST a recvonly offer -> 201 sendonly answer; HEAD tells liveness."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from fastapi import APIRouter, Header, Query, Request, Response

from .access import AccessPolicy
from .http_common import SDP, check_room, read_limited, require_content_type
from .sdp import check_offer, decode_body
from .session_http import add_session_routes, created_response
from .viewers import ViewerService


@dataclass(frozen=True, slots=True)
class HubSelection:
    """What a WHEP request asks for beyond its room: a rendition of the program
    (``?rendition=360p``) or one anchor's own stream (``?anchor=ID``). The service's hub lookup
    reads it (``current_selection``) while the request opens its session."""

    rendition: str | None = None
    anchor: str | None = None


_NONE = HubSelection()
_selection: ContextVar[HubSelection | None] = ContextVar("whep_selection", default=None)


def current_selection() -> HubSelection:
    return _selection.get() or _NONE


def whep_router(
    service: ViewerService,
    access: AccessPolicy,
    *,
    max_sdp_bytes: int = 64 * 1024,
    link_headers: tuple[str, ...] = (),
) -> APIRouter:
    router = APIRouter(tags=["whep"])

    @router.head("/whep/{room}")
    async def whep_head(
        room: str,
        rendition: str | None = Query(default=None, max_length=16),
        anchor: str | None = Query(default=None, max_length=64),
    ) -> Response:
        """200 when the room (rendition, anchor) is live, 409 + Retry-After when not."""
        token = _selection.set(HubSelection(rendition, anchor))
        try:
            service.live_hub(room)
        finally:
            _selection.reset(token)
        return Response(status_code=200, headers={"Content-Type": SDP, "Accept-Post": SDP})

    @router.post(
        "/whep/{room}",
        status_code=201,
        responses={201: {"content": {SDP: {}}, "description": "SDP answer"}},
    )
    async def whep_post(
        request: Request,
        room: str,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
        rendition: str | None = Query(default=None, max_length=16),
        anchor: str | None = Query(default=None, max_length=64),
    ) -> Response:
        """Watch the room's program; ``?rendition=NAME`` picks a rendition (e.g. 360p),
        ``?anchor=ID`` one anchor's own stream (co-hosts pulling each other)."""
        check_room(room)
        grant = access.authorize(room, "audience", authorization, access_token)
        require_content_type(request, SDP)
        text = decode_body(await read_limited(request, max_sdp_bytes), max_bytes=max_sdp_bytes)
        summary = check_offer(text, "view")
        token = _selection.set(HubSelection(rendition, anchor))
        try:
            session = await service.open(room, text, summary, grant)
        finally:
            _selection.reset(token)
        return created_response(
            "/whep", room, session.id, session.etag, session.pc.localDescription.sdp, link_headers
        )

    add_session_routes(
        router,
        "/whep",
        "audience",
        service,
        access,
        post_methods="POST, HEAD, OPTIONS",
        max_sdp_bytes=max_sdp_bytes,
    )
    return router
