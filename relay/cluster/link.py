"""The internal link: an edge pulls one stream from its upstream exactly as a viewer would (WHEP
recvonly offer), but taps the encoded frames into a local hub instead of decoding them.

Keyframe requests on the local hub go upstream as RTCP PLI on this link (the upstream hub
coalesces them with its own). The link is authenticated with an audience token whose subject is
``node:<id>`` and marked with the ``X-Stagecast-Link`` header so the upstream never redirects it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as aiortc_sdp

from relay.auth.turn import NodeIce
from relay.cluster.node import LINK_HEADER
from relay.errors import (
    BadRequest,
    BadSdp,
    Conflict,
    NotFound,
    ServiceUnavailable,
    StagecastError,
    Unprocessable,
)
from relay.media.frames import CodecSpec, MediaKind
from relay.media.hub import FanoutHub
from relay.media.stream_key import StreamKey
from relay.rtc.ingest import IngestSet, TrackIngest
from relay.rtc.peer import close_quietly, rtc_configuration
from relay.rtc.sdp import SUPPORTED_CODECS

if TYPE_CHECKING:
    import httpx  # imported where used: an origin that pulls nothing never loads it

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3


@dataclass(frozen=True, slots=True)
class LinkConfig:
    upstream: str  # base URL of the origin or parent relay
    node_id: str
    ice_servers: NodeIce = ()
    keyframe_interval: float = 0.25
    video_queue_frames: int = 60
    audio_queue_frames: int = 100
    gop_cache_bytes: int = 0
    reassembly_wait: float = 0.1
    request_timeout: float = 5.0
    retry_after: int = 2


# Upstream answers to a pull that are the viewer's fault (its query), passed on as they are.
_VIEWER_FAULTS: dict[int, type[StagecastError]] = {
    400: BadRequest,
    404: NotFound,
    422: Unprocessable,
}


def _problem_detail(resp: httpx.Response) -> str:
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail)[:200] if detail else f"HTTP {resp.status_code}"


def answer_codecs(answer: str) -> dict[MediaKind, CodecSpec]:
    """The codec the upstream sends per kind, read from its SDP answer (sans-I/O)."""
    try:
        desc = aiortc_sdp.SessionDescription.parse(answer)
    except Exception as exc:
        raise BadSdp(f"upstream answer could not be parsed: {type(exc).__name__}") from exc
    codecs: dict[MediaKind, CodecSpec] = {}
    for media in desc.media:
        if media.kind not in SUPPORTED_CODECS or media.direction not in ("sendonly", "sendrecv"):
            continue
        if media.port == 0:
            continue
        kind: MediaKind = media.kind
        for codec in media.rtp.codecs:
            if any(codec.name.lower() == s.lower() for s in SUPPORTED_CODECS[kind]):
                codecs[kind] = CodecSpec(kind, codec.name, codec.clockRate)
                break
    return codecs


@dataclass(eq=False)
class UpstreamLink:
    key: StreamKey
    pc: RTCPeerConnection
    hub: FanoutHub
    location: str
    headers: dict[str, str]
    ingests: IngestSet = field(default_factory=IngestSet)
    created_at: float = field(default_factory=time.monotonic)

    @property
    def room(self) -> str:
        return self.key.room

    def request_keyframe(self) -> None:
        self.ingests.request_keyframe()

    @property
    def last_media_at(self) -> float | None:
        return self.ingests.last_media_at

    @property
    def packets(self) -> int:
        return self.ingests.packets

    async def close(self, client: httpx.AsyncClient | None, *, delete: bool = True) -> None:
        """End the pull: the upstream session is deleted, the peer connection closed."""
        import httpx

        if delete and client is not None:
            try:
                await client.delete(self.location, headers=self.headers, timeout=2.0)
            except httpx.HTTPError as exc:
                log.debug("upstream DELETE of %s failed: %r", self.location, exc)
        await close_quietly(self.pc)


async def open_link(
    config: LinkConfig, key: StreamKey, token: str, client: httpx.AsyncClient
) -> UpstreamLink:
    """Pull the stream ``key`` names from the upstream; raises Conflict (not live there) or
    ServiceUnavailable."""
    import httpx

    room = key.room
    pc = RTCPeerConnection(rtc_configuration(config.ice_servers))
    headers = {"Authorization": f"Bearer {token}", LINK_HEADER: config.node_id}
    try:
        transceivers = {
            kind: pc.addTransceiver(kind, direction="recvonly") for kind in SUPPORTED_CODECS
        }
        await pc.setLocalDescription(await pc.createOffer())
        url = config.upstream.rstrip("/") + key.path("/whep")
        resp = None
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = await client.post(
                    url,
                    content=pc.localDescription.sdp,
                    headers={**headers, "Content-Type": "application/sdp"},
                    timeout=config.request_timeout,
                )
            except httpx.HTTPError as exc:
                raise ServiceUnavailable(
                    f"upstream {config.upstream} unreachable: {type(exc).__name__}",
                    retry_after=config.retry_after,
                ) from exc
            if resp.status_code not in (307, 308):
                break
            url = urljoin(url, resp.headers.get("location", url))
        assert resp is not None
        if resp.status_code == 409:
            raise Conflict(f"room {room!r} is not live", retry_after=config.retry_after)
        refusal = _VIEWER_FAULTS.get(resp.status_code)
        if refusal is not None:  # what the viewer asked for (rendition, anchor) is wrong there
            raise refusal(f"upstream: {_problem_detail(resp)}")
        if resp.status_code != 201 or "location" not in resp.headers:
            raise ServiceUnavailable(
                f"upstream refused the pull: HTTP {resp.status_code}",
                retry_after=config.retry_after,
            )
        try:
            codecs = answer_codecs(resp.text)
        except BadSdp as exc:
            raise ServiceUnavailable(exc.detail, retry_after=config.retry_after) from exc
        if not codecs:
            raise ServiceUnavailable("upstream sends no media", retry_after=config.retry_after)
        hub = FanoutHub(
            key,
            codecs,
            keyframe_interval=config.keyframe_interval,
            video_queue_frames=config.video_queue_frames,
            audio_queue_frames=config.audio_queue_frames,
            gop_cache_bytes=config.gop_cache_bytes,
        )
        link = UpstreamLink(key, pc, hub, urljoin(url, resp.headers["location"]), headers)
        for kind, transceiver in transceivers.items():
            if kind in codecs:
                link.ingests[kind] = TrackIngest(  # our upstream: its SEI is ours
                    kind,
                    transceiver.receiver,
                    hub,
                    max_wait=config.reassembly_wait,
                    trusted_sei=True,
                )
        try:
            await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
        except Exception as exc:  # the upstream's answer, not the viewer's offer, is at fault
            raise ServiceUnavailable(
                f"upstream answer unusable: {exc}"[:300], retry_after=config.retry_after
            ) from exc
    except BaseException:
        await close_quietly(pc)
        raise
    hub.attach_source(link.request_keyframe)
    return link
