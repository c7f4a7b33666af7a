"""Peer-connection helpers shared by anchors, viewers and relay links."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from relay.auth.turn import IceDirectory
from relay.errors import StagecastError, Unprocessable
from relay.media.frames import MediaKind
from relay.rtc.adapter import guard_ice_checks, keep_header_extensions
from relay.rtc.candidates import (
    DEFAULT_POLICY,
    CandidatePolicy,
    Screening,
    filter_offer,
    known_keys,
    screen,
)
from relay.rtc.sdp import SimulcastOffer, TrickleFragment, parse_candidate

log = logging.getLogger(__name__)

CLOSED_STATES = frozenset({"failed", "closed"})


NODE_SUBJECT = "node"


def rtc_configuration(ice_servers: Sequence[str] | IceDirectory) -> RTCConfiguration:
    """An explicit ICE server list: empty means host candidates only (aiortc would otherwise
    contact a public STUN server). A directory issues this peer a fresh TURN credential."""
    if isinstance(ice_servers, IceDirectory):
        servers = ice_servers.servers(NODE_SUBJECT, time.time())
        return RTCConfiguration(
            iceServers=[
                RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
                for s in servers
            ]
        )
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=list(ice_servers))] if ice_servers else []
    )


def codec_preferences(
    kind: MediaKind, name: str, *, receiving: bool
) -> list[RTCRtpCodecCapability]:
    """aiortc's capabilities for one codec name, plus RTX for video."""
    capabilities = (RTCRtpReceiver if receiving else RTCRtpSender).getCapabilities(kind)
    assert capabilities is not None
    caps = capabilities.codecs
    chosen = [c for c in caps if c.name.lower() == name.lower()]
    if not chosen:
        raise Unprocessable(f"codec {name} is not available for {kind}")
    if kind == "video":
        chosen += [c for c in caps if c.name.lower() == "rtx"]
    return chosen


def screen_offer(text: str, policy: CandidatePolicy) -> str:
    """The offer without the remote candidates the session may not keep (relay.rtc.candidates)."""
    screened, verdict = filter_offer(text, policy)
    _log_dropped(verdict, "offer")
    return screened


async def apply_trickle(
    pc: RTCPeerConnection, frag: TrickleFragment, policy: CandidatePolicy = DEFAULT_POLICY
) -> int:
    """Add trickled remote candidates within the session's limit (relay.rtc.candidates);
    returns how many were added. Unusable and repeated ones are ignored; a fragment whose new
    candidates are all beyond the limit is refused (422)."""
    added = 0
    mids = [t.mid for t in pc.getTransceivers()]
    parsed = []
    for mid, value in frag.candidates:
        parsed.append((mid, parse_candidate(value)))  # parse_trickle has vetted them (BadSdp)
    remote = pc.remoteDescription
    known = known_keys(remote.sdp, policy) if remote is not None else frozenset()
    verdict = screen((value for _, value in frag.candidates), policy, known)
    _log_dropped(verdict, "ICE fragment")
    if verdict.over_limit and not verdict.accepted:
        raise Unprocessable(
            f"this session has its maximum of {policy.max_per_session} remote candidates"
        )
    for i in verdict.accepted:
        mid, cand = parsed[i]
        cand.sdpMid = mid if mid in mids else (mids[0] if mids else None)
        if cand.sdpMid is None:
            continue
        try:
            await pc.addIceCandidate(cand)
        except Exception as exc:  # whatever aiortc/aioice still find wrong with it
            raise Unprocessable(f"candidate refused: {exc}") from exc
        added += 1
    return added


async def answer_offer(
    pc: RTCPeerConnection,
    offer_sdp: str,
    policy: CandidatePolicy = DEFAULT_POLICY,
    *,
    prepare: Callable[[RTCPeerConnection], Awaitable[None]] | None = None,
    simulcast: SimulcastOffer | None = None,
) -> None:
    """Apply a remote offer (its candidates screened by ``policy``, the ICE checks guarded)
    and set our answer: the one place aiortc judges an offer. With ``simulcast`` the video
    section keeps the RTP stream id extensions (the caller adds the answer's ``a=simulcast``
    lines: ``relay.rtc.sdp.with_simulcast``).

    ``check_offer`` refuses what aiortc is known to reject; anything it still raises here is
    the offer's fault too: 422 (logged, as a gap in ``check_offer``). ``pc`` is closed on any
    error, so no half-negotiated connection outlives the request."""
    try:
        await pc.setRemoteDescription(
            RTCSessionDescription(screen_offer(offer_sdp, policy), "offer")
        )
        await asyncio.sleep(0)  # each step its own turn of the loop (~1 ms each): media between
        guard_ice_checks(pc, policy)
        if simulcast is not None:
            keep_header_extensions(pc, "video", simulcast.extensions)
        if prepare is not None:  # the node's transport (relay.rtc.transport): before the answer
            await prepare(pc)
        answer = await pc.createAnswer()
        await asyncio.sleep(0)
        await pc.setLocalDescription(answer)
    except Exception as exc:
        await close_quietly(pc)
        if isinstance(exc, StagecastError):
            raise
        log.warning("aiortc refused an offer that check_offer passed", exc_info=True)
        raise Unprocessable(f"offer could not be negotiated: {exc}"[:300]) from exc


def _log_dropped(verdict: Screening, where: str) -> None:
    if verdict.dropped:
        log.info(
            "ignored %d remote candidate(s) in an %s: %d unusable, %d beyond the session limit",
            verdict.dropped,
            where,
            verdict.unusable,
            verdict.over_limit,
            extra={"event": "ice.candidates_dropped"},
        )


async def close_quietly(pc: RTCPeerConnection, timeout: float = 5.0) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pc.close(), timeout)
