"""The app factory every node starts from: lifespan, problem+json, CORS and the ops routes
(``/healthz``, ``/readyz``, ``/metrics``). The origin (``gateway.app``) and the edge
(``relay.server.edge``) add their own routes to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response

from relay.http.common import CorsHeaders
from relay.http.guards import RequestGuards
from relay.http.keys import KeyAuth
from relay.http.problems import install_problem_handlers, problem_responses
from relay.http.ratelimit import ClientRateLimiter
from relay.media.playout_delay import PlayoutDelayLimits
from relay.media.retransmit import RetransmitLimits
from relay.ops.code_pages import CodePages
from relay.rtc.candidates import CandidatePolicy
from relay.rtc.viewers import ViewerLimits
from relay.server.metrics import CONTENT_TYPE
from relay.server.settings import LimitSettings, NodeSettings


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/readyz`` says: 200 ``{"status": "ready", ...detail}`` or, when the node takes
    no new viewers, 503 ``{"status": "draining", ...}``."""

    ready: bool
    detail: Mapping[str, object] = field(default_factory=dict)


class Node(Protocol):
    """What the factory needs of a node: its lifespan, its readiness and its metrics."""

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    def readiness(self) -> Readiness: ...

    def metrics(self) -> bytes:
        """The Prometheus exposition of the node's state now."""
        ...


def create_node_app(
    node: Node,
    *,
    title: str,
    summary: str,
    limits: LimitSettings,
    cors_origin: str = "*",
    ops_keys: tuple[str, ...] = (),
) -> FastAPI:
    """``ops_keys``: the credentials ``/metrics`` takes (the operator key, then the metrics
    token if set): it names rooms, private ones included. Empty: open (an app embedded behind
    its own guard). ``limits``: the body cap (413) and the WHIP/WHEP POST rate per address
    (429), in front of every route of origin and edge alike."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        pages = CodePages() if limits.release_code_pages else None
        if pages is not None:
            pages.start()
        try:
            yield
        finally:
            if pages is not None:
                await pages.stop()
            await node.shutdown()

    app = FastAPI(title=title, version="0.1.0", summary=summary, lifespan=lifespan)
    install_problem_handlers(app)
    app.add_middleware(
        RequestGuards,
        max_body_bytes=limits.max_body_bytes,
        limiter=ClientRateLimiter(limits.session_posts_per_second, limits.session_post_burst),
    )
    app.add_middleware(CorsHeaders, allow_origin=cors_origin)

    scrape = KeyAuth(*ops_keys, what="metrics token or operator key") if ops_keys else None

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        dependencies=[Depends(scrape)] if scrape is not None else [],
        responses=problem_responses(401) if scrape is not None else None,
    )
    async def metrics() -> Response:
        """Prometheus exposition of the node's streams, sessions, traffic and loop lag
        (``Authorization: Bearer`` the metrics token or the operator key)."""
        return Response(node.metrics(), media_type=CONTENT_TYPE)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        r = node.readiness()
        body = {"status": "ready" if r.ready else "draining", **r.detail}
        return JSONResponse(body, status_code=200 if r.ready else 503)

    return app


def viewer_limits(
    settings: NodeSettings, *, max_viewers: int | None, candidates: CandidatePolicy
) -> ViewerLimits:
    """What every WHEP viewer of a node (origin or edge) is held to, from its settings; the
    viewer ceiling and the candidate policy are the role's own."""
    media, sessions = settings.media, settings.sessions
    return ViewerLimits(
        retransmit=RetransmitLimits(
            max_age=media.rtx_max_age, share=media.rtx_share, playout=media.rtx_playout
        ),
        transport_cc=media.viewer_transport_cc,
        probing=media.viewer_probing,
        nack_solicit=media.viewer_nack_solicit,
        nack_solicit_lossy=media.viewer_nack_solicit_lossy_s,
        feedback_repair=media.viewer_feedback_repair,
        playout_delay=PlayoutDelayLimits(
            enabled=media.viewer_playout_delay,
            max_ms=media.viewer_playout_delay_max_ms,
            fixed_ms=min(media.viewer_playout_delay_fixed_ms, media.viewer_playout_delay_max_ms),
        ),
        fec=media.viewer_fec,
        audio_red=media.viewer_audio_red,
        audio_red_on_loss=media.viewer_audio_red_on_loss,
        estimation=media.viewer_estimation,
        keyframe_backoff=media.viewer_keyframe_backoff,
        connect_timeout=sessions.connect_timeout,
        retry_after=sessions.retry_after,
        certificate_lifetime=sessions.certificate_lifetime,
        max_viewers=max_viewers,
        native=media.native_send,
        candidates=candidates,
    )
