"""The node's WebRTC transport policy: how every answering peer connection (anchors' WHIP,
viewers' WHEP) gets its ICE candidates and keeps its consent. Owned by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from aiortc import RTCPeerConnection

from relay.auth.turn import NodeIce
from relay.media.consent import DEFAULT_CONSENT_TIMEOUT
from relay.rtc.adapter import install_traffic_consent
from relay.rtc.peer import rtc_configuration


@dataclass(frozen=True, slots=True)
class TransportConfig:
    ice_servers: NodeIce = ()
    consent_timeout: float = DEFAULT_CONSENT_TIMEOUT
    """A session whose peer sends no authenticated STUN and no SRTP/SRTCP this long ends."""


class NodeTransport:
    """Creates and prepares the peer connections a node answers with."""

    def __init__(self, config: TransportConfig | None = None) -> None:
        self.config = config or TransportConfig()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def peer_connection(self) -> RTCPeerConnection:
        return RTCPeerConnection(rtc_configuration(self.config.ice_servers))

    async def prepare_answer(self, pc: RTCPeerConnection) -> None:
        """Call after ``setRemoteDescription(offer)``, before the answer is created."""
        install_traffic_consent(pc, self.config.consent_timeout)
