"""Peer-connection helpers shared by anchors, viewers and relay links."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
)
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import candidate_from_sdp

from relay.errors import Unprocessable
from relay.media.frames import MediaKind
from relay.rtc.sdp import TrickleFragment

CLOSED_STATES = frozenset({"failed", "closed"})


def rtc_configuration(ice_servers: Sequence[str]) -> RTCConfiguration:
    """An explicit ICE server list: empty means host candidates only (aiortc would otherwise
    contact a public STUN server)."""
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


async def apply_trickle(pc: RTCPeerConnection, frag: TrickleFragment) -> int:
    """Add trickled remote candidates; returns how many were added."""
    added = 0
    mids = [t.mid for t in pc.getTransceivers()]
    for mid, value in frag.candidates:
        try:
            cand = candidate_from_sdp(value)
        except (ValueError, IndexError) as exc:
            raise Unprocessable(f"candidate could not be parsed: {exc}") from exc
        cand.sdpMid = mid if mid in mids else (mids[0] if mids else None)
        if cand.sdpMid is None:
            continue
        await pc.addIceCandidate(cand)
        added += 1
    return added


async def close_quietly(pc: RTCPeerConnection, timeout: float = 5.0) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(pc.close(), timeout)
