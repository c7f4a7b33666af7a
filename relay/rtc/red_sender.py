"""One viewer's audio in RED (``relay.media.audio_red``) in the direct send path.

The frame's packet comes from the node's shared templates as a RED packet with its primary block
only (``SendProfile.red_payload_type``: one header for every RED viewer); here the viewer's own
earlier payloads are put ahead of it (they differ from viewer to viewer only when a queue
dropped a frame). A frame of several packets (not Opus) goes as the template has it.
"""

from __future__ import annotations

from relay.media.audio_red import RedEncoder
from relay.media.frames import EncodedFrame
from relay.rtc.rtp_rewrite import FramePackets, SendProfile, header_length


class RedSender:
    """``wrap`` each audio frame's packets before they are numbered (the history keeps them as
    sent); ``added`` is the bytes the last frame gained."""

    def __init__(self, profile: SendProfile, distance: int) -> None:
        self.encoder = RedEncoder(profile.payload_type, distance)
        self.added = 0

    @property
    def copies(self) -> int:
        return self.encoder.copies

    @property
    def octets(self) -> int:
        return self.encoder.octets

    def wrap(self, packets: FramePackets, frame: EncodedFrame) -> FramePackets:
        if len(packets.templates) != 1 or len(frame.payloads) != 1:
            self.added = 0
            return packets
        template = packets.templates[0]
        packet = template[: header_length(template)] + self.encoder.encode(
            frame.payloads[0], frame.timestamp
        )
        self.added = len(packet) - len(template)
        return FramePackets((packet,), packets.runs, (len(packet),))
