"""A small aiortc anchor (320x180 at 15 fps and a tone) published to a node the tests started."""

from __future__ import annotations

from gateway.synthetic import Publisher, StampedVideoTrack, ToneAudioTrack, whip_publish
from relay.auth.tokens import TokenAuthority


async def publish_small_anchor(base: str, secret: str, room: str = "demo") -> Publisher:
    return await whip_publish(
        base,
        room,
        TokenAuthority(secret).mint(room, "anchor", "test", 600),
        video=StampedVideoTrack(320, 180, 15),
        audio=ToneAudioTrack(440),
    )
