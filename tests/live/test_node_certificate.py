"""One DTLS certificate per node: peer connections that share it still complete DTLS with
distinct peers, each viewer's answer carries the node's fingerprint, and a rotation gives later
viewers a fresh certificate while earlier ones keep theirs."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import pytest
from aiortc import RTCPeerConnection

from gateway.synthetic import SolidColourTrack, Viewer, whep_watch, whip_publish
from relay.rtc.adapter import NodeCertificate, use_certificate
from relay.rtc.certificates import RotatingCertificate
from relay.rtc.peer import close_quietly, rtc_configuration
from tests.support.server import RunningServer


def answer_fingerprint(sdp: str) -> str:
    found = re.search(r"a=fingerprint:sha-256 ([0-9A-F:]+)", sdp)
    assert found is not None
    return found.group(1)


async def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def connected(pc: RTCPeerConnection, timeout: float) -> bool:
    return await wait_for(lambda: pc.connectionState == "connected", timeout)


@pytest.mark.timeout(30)
async def test_shared_certificate_completes_dtls_with_distinct_peers() -> None:
    certificate = NodeCertificate.generateCertificate()
    node_fp = certificate.getFingerprints()[0].value
    pairs: list[tuple[RTCPeerConnection, RTCPeerConnection]] = []
    try:
        for _ in range(2):
            client, node = (
                RTCPeerConnection(rtc_configuration(())),
                RTCPeerConnection(rtc_configuration(())),
            )
            pairs.append((client, node))
            client.addTransceiver("video", direction="recvonly")
            await client.setLocalDescription(await client.createOffer())
            use_certificate(node, certificate)
            node.addTransceiver(SolidColourTrack((200, 40, 40)), direction="sendonly")
            await node.setRemoteDescription(client.localDescription)
            await node.setLocalDescription(await node.createAnswer())
            assert answer_fingerprint(node.localDescription.sdp) == node_fp
            await client.setRemoteDescription(node.localDescription)
        for client, node in pairs:
            assert await connected(client, 10) and await connected(node, 10)
        client_fps = {answer_fingerprint(c.localDescription.sdp) for c, _ in pairs}
        assert len(client_fps) == 2 and node_fp not in client_fps  # distinct peers
        assert len(certificate._contexts) == 1  # one OpenSSL context for both handshakes
    finally:
        for client, node in pairs:
            await close_quietly(client)
            await close_quietly(node)


async def first_frame(viewer: Viewer, timeout: float) -> bool:
    return await wait_for(lambda: viewer.first_frame_at is not None, timeout)


@pytest.mark.timeout(60)
async def test_viewers_share_the_node_certificate_until_it_rotates(server: RunningServer) -> None:
    room = "cert-rotation"
    now = [0.0]
    rotating = RotatingCertificate(3600, clock=lambda: now[0])
    server.gateway.viewers.certificate = rotating
    video = SolidColourTrack((40, 200, 40), 320, 180)
    pub = await whip_publish(server.base_url, room, server.anchor_token(room), video=video)
    viewers: list[Viewer] = []
    try:
        for _ in range(2):
            viewers.append(await whep_watch(server.base_url, room, kinds=("video",), decode=False))
        now[0] += 3600
        viewers.append(await whep_watch(server.base_url, room, kinds=("video",), decode=False))
        fps = [answer_fingerprint(v.pc.remoteDescription.sdp) for v in viewers]
        assert fps[0] == fps[1] != fps[2]
        assert rotating.rotations == 1
        for v in viewers:
            assert await first_frame(v, 15)  # DTLS done and media flowing, old cert and new
    finally:
        for v in viewers:
            await v.close()
        await pub.close()


def other_fingerprint(offer: str) -> str:
    """The offer with its DTLS fingerprint replaced by another certificate's: what a peer that
    is not the one that signalled (a man in the middle) would present."""
    stranger = NodeCertificate.generateCertificate().getFingerprints()[0].value
    return re.sub(r"a=fingerprint:sha-256 [0-9A-F:]+", f"a=fingerprint:sha-256 {stranger}", offer)


@pytest.mark.timeout(60)
async def test_shared_certificate_refuses_a_peer_whose_fingerprint_does_not_match(
    server: RunningServer,
) -> None:
    """The node's one certificate and OpenSSL context (and the shared UDP port) do not weaken
    the DTLS check: a viewer whose certificate is not the one its offer names never gets media,
    and its session ends, while an honest viewer alongside it connects with the same context."""
    room = "cert-mismatch"
    video = SolidColourTrack((40, 40, 200), 320, 180)
    pub = await whip_publish(server.base_url, room, server.anchor_token(room), video=video)
    viewers = server.gateway.viewers
    try:
        forged = await whep_watch(
            server.base_url, room, kinds=("video",), decode=False, offer_transform=other_fingerprint
        )
        honest = await whep_watch(server.base_url, room, kinds=("video",), decode=False)
        forged_id = forged.location.rsplit("/", 1)[-1]  # (201: answered; it may end at once)
        assert await first_frame(honest, 20), "the honest viewer got no media"
        ended = await wait_for(lambda: forged_id not in viewers.sessions, 20)
        assert ended, "the forged viewer's session is still open"  # DTLS failed: it ends
        assert forged.first_frame_at is None and forged.video_frames == 0, "media to a forger"
        assert len(viewers.certificate.current()._contexts) == 1  # the shared context
        await forged.close()
        await honest.close()
    finally:
        await pub.close()
