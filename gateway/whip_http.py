"""WHIP anchor push endpoint (RFC 9725): POST a sendonly offer -> 201 recvonly answer."""

from __future__ import annotations

import time

from fastapi import APIRouter, Header, Query, Request, Response

from relay.auth.access import AccessPolicy
from relay.auth.turn import IceDirectory
from relay.http.common import SDP, check_room, read_limited, require_content_type
from relay.http.problems import SESSION_POST_ERRORS
from relay.http.sessions import add_session_routes, created_response
from relay.rtc.sdp import (
    OfferSummary,
    check_offer,
    decode_body,
    with_opus_dtx,
    with_simulcast,
    with_start_bitrate,
)

from .anchors import AnchorService


def anchor_answer(
    answer: str, offer: OfferSummary, *, start_kbps: int = 0, opus_dtx: bool = False
) -> str:
    """aiortc's answer to an anchor's offer, completed: simulcast lines, where a browser's
    bandwidth estimate starts (``x-google-start-bitrate`` on its video codecs, for offers with
    transport-cc only: other clients' answers stay as aiortc wrote them), Opus DTX."""
    if offer.transport_cc:
        answer = with_start_bitrate(answer, start_kbps)
    answer = with_simulcast(answer, offer.simulcast)
    return with_opus_dtx(answer) if opus_dtx else answer


def whip_router(
    service: AnchorService,
    access: AccessPolicy,
    *,
    max_sdp_bytes: int = 64 * 1024,
    ice: IceDirectory | None = None,
    start_kbps: int = 0,
    cc_start_kbps: int = 0,
    opus_dtx: bool = False,
) -> APIRouter:
    """``start_kbps``: the bandwidth estimate a browser anchor (an offer with transport-cc)
    starts from (0: its own);
    ``cc_start_kbps``: the same for an anchor that negotiated transport-cc (0: ``start_kbps``);
    ``opus_dtx``: ask anchors for Opus DTX; ``ice``: the ICE servers (a fresh TURN credential
    for the anchor's subject) in the 201's and the endpoint OPTIONS' Link headers."""
    ice = ice or IceDirectory()
    router = APIRouter(tags=["whip"])

    @router.post(
        "/whip/{room}",
        status_code=201,
        responses={201: {"content": {SDP: {}}, "description": "SDP answer"}, **SESSION_POST_ERRORS},
    )
    async def whip_post(
        request: Request,
        room: str,
        authorization: str | None = Header(default=None),
        access_token: str | None = Query(default=None),
    ) -> Response:
        check_room(room)
        grant = access.authorize(room, "anchor", authorization, access_token)
        require_content_type(request, SDP)
        text = decode_body(await read_limited(request, max_sdp_bytes), max_bytes=max_sdp_bytes)
        summary = check_offer(text, "publish")
        session = await service.open(room, text, summary, grant)
        cc = session.congestion is not None and session.congestion.negotiated
        start = cc_start_kbps if cc and cc_start_kbps else start_kbps
        answer = anchor_answer(
            session.pc.localDescription.sdp, summary, start_kbps=start, opus_dtx=opus_dtx
        )
        links = ice.links(grant.subject, time.time())
        return created_response("/whip", room, session.id, session.etag, answer, links)

    add_session_routes(
        router,
        "/whip",
        "anchor",
        service,
        access,
        post_methods="POST, OPTIONS",
        max_sdp_bytes=max_sdp_bytes,
        ice=ice,
    )
    return router
