"""The HTTP resource shape WHIP and WHEP share: OPTIONS, DELETE and trickle PATCH on a session."""

from __future__ import annotations

import time
from typing import Any, Protocol

from fastapi import APIRouter, Header, Query, Request, Response

from relay.auth.access import AccessPolicy
from relay.auth.tokens import Role
from relay.auth.turn import IceDirectory
from relay.errors import (
    Forbidden,
    PreconditionFailed,
    PreconditionRequired,
    Unauthorized,
    Unprocessable,
)
from relay.http.common import SDP, TRICKLE, preflight_headers, read_limited, require_content_type
from relay.http.problems import SESSION_DELETE_ERRORS, SESSION_PATCH_ERRORS
from relay.rtc.sdp import TrickleFragment, decode_body, parse_trickle


class SessionService(Protocol):
    def get(self, room: str, session_id: str) -> Any: ...

    async def close(self, room: str, session_id: str) -> None: ...

    async def trickle(self, session: Any, frag: TrickleFragment) -> None: ...


SESSION_METHODS = "PATCH, DELETE, OPTIONS"


def add_session_routes(
    router: APIRouter,
    prefix: str,
    role: Role | tuple[Role, ...],
    service: SessionService,
    access: AccessPolicy,
    *,
    post_methods: str,
    max_sdp_bytes: int,
    ice: IceDirectory | None = None,
) -> None:
    """Adds ``OPTIONS {prefix}/{room}`` and OPTIONS/DELETE/PATCH on ``{prefix}/{room}/{id}``;
    DELETE and PATCH take a grant for ``role`` (or any of several roles) in the room with the
    session's own subject, or the operator key (``AccessPolicy.authorize_session``).
    The endpoint's OPTIONS carries ``ice``'s Link headers (RFC 9725 4.6): TURN credentials only
    for a caller a POST would admit, the fixed URLs for anyone (a CORS preflight has no token)."""
    roles = role if isinstance(role, tuple) else (role,)
    listed = [m.strip() for m in f"{post_methods}, {SESSION_METHODS}".split(",")]
    cors_methods = ", ".join(dict.fromkeys(listed))

    def authorize_session(
        session: Any, room: str, authorization: str | None, access_token: str | None
    ) -> None:
        access.authorize_session(room, roles, session.grant, authorization, access_token)

    @router.options(prefix + "/{room}", status_code=204)
    async def endpoint_options(request: Request, room: str) -> Response:
        # CORS: the session resources under the endpoint too (clients such as Eyevinn's
        # whip-web-client take PATCH here as "trickle ICE supported"); Allow: this resource's
        # own methods (RFC 9110 10.2.1).
        headers = preflight_headers(cors_methods, request.headers.get("origin", "*"))
        headers["Allow"] = post_methods
        headers["Accept-Post"] = SDP
        if ice is not None:
            links = ice_links_for(request, room)
            if links:
                headers["Link"] = ", ".join(links)
        return Response(status_code=204, headers=headers)

    def ice_links_for(request: Request, room: str) -> tuple[str, ...]:
        assert ice is not None
        q, h = request.query_params, request.headers
        try:
            grant = access.authorize_any(room, roles, h.get("authorization"), q.get("access_token"))
        except (Unauthorized, Forbidden):
            return ice.public_links()
        return ice.links(grant.subject, time.time())

    @router.options(prefix + "/{room}/{session_id}", status_code=204)
    async def session_options(request: Request, room: str, session_id: str) -> Response:
        headers = preflight_headers(SESSION_METHODS, request.headers.get("origin", "*"))
        headers["Allow"] = SESSION_METHODS
        headers["Accept-Patch"] = TRICKLE
        return Response(status_code=204, headers=headers)

    @router.delete(
        prefix + "/{room}/{session_id}",
        status_code=200,
        response_class=Response,
        responses={200: {"description": "Session ended"}, **SESSION_DELETE_ERRORS},
    )
    async def session_delete(
        room: str,
        session_id: str,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
    ) -> Response:
        session = service.get(room, session_id)
        authorize_session(session, room, authorization, access_token)
        await service.close(room, session_id)
        return Response(status_code=200)

    @router.patch(prefix + "/{room}/{session_id}", status_code=204, responses=SESSION_PATCH_ERRORS)
    async def session_patch(
        request: Request,
        room: str,
        session_id: str,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
        if_match: str | None = Header(default=None),
        etag: str | None = Header(default=None),
    ) -> Response:
        session = service.get(room, session_id)
        authorize_session(session, room, authorization, access_token)
        require_content_type(request, TRICKLE)
        if if_match is None:  # 428 before the body is read: nothing in it can make it right
            check_patch_preconditions(None, session.etag, None, None, sent_etag=etag)
        body = await read_limited(request, max_sdp_bytes)
        frag = parse_trickle(decode_body(body, max_bytes=max_sdp_bytes))
        check_patch_preconditions(
            if_match, session.etag, frag.ufrag, remote_ufrag(session.pc), sent_etag=etag
        )
        await service.trickle(session, frag)
        return Response(status_code=204)


def created_response(
    prefix: str, room: str, session_id: str, etag: str, answer_sdp: str, links: tuple[str, ...]
) -> Response:
    """201 with the answer and the session resource's Location and ETag (RFC 9725 4.2)."""
    headers = {"Location": f"{prefix}/{room}/{session_id}", "ETag": etag, "Accept-Patch": TRICKLE}
    if links:
        headers["Link"] = ", ".join(links)
    return Response(answer_sdp, status_code=201, media_type=SDP, headers=headers)


def remote_ufrag(pc: Any) -> str | None:
    desc = getattr(pc, "remoteDescription", None)
    if desc is None:
        return None
    for line in desc.sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return str(line.split(":", 1)[1].strip())
    return None


def check_patch_preconditions(
    if_match: str | None,
    etag: str,
    frag_ufrag: str | None,
    current_ufrag: str | None,
    *,
    sent_etag: str | None = None,
) -> None:
    """RFC 9725 section 4.3: ETag preconditions, and ICE restarts (which aiortc cannot do).
    ``sent_etag``: an ``ETag`` request header, which some clients send instead of If-Match."""
    if if_match is None:
        detail = "PATCH needs an If-Match header with the session's entity tag (from the 201)"
        if sent_etag is not None:
            detail += (
                "; this request has an ETag header instead, which HTTP defines for responses "
                "only: send the same value as If-Match"
            )
        raise PreconditionRequired(detail)
    restart = frag_ufrag is not None and current_ufrag is not None and frag_ufrag != current_ufrag
    if restart or if_match.strip() == "*":
        raise Unprocessable("ICE restarts are not supported; open a new session instead")
    if if_match.strip() != etag:
        raise PreconditionFailed("If-Match does not match the session's ETag")
