"""ICE consent by traffic (the policy of issue 16), sans-I/O.

RFC 7675 has the sender ask its peer for consent every ~5 s; ffmpeg's WHIP muxer answers only
the first Binding request, so a node that insists on answers drops a healthy ffmpeg anchor after
~30 s. Servers that ffmpeg is used with (SRS, Janus, MediaMTX) instead keep a session while its
peer keeps talking. So does this timer: authenticated STUN or SRTP/SRTCP from the peer is
``seen``; nothing for ``timeout`` seconds and the session has ``expired``.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CONSENT_TIMEOUT = 30.0  # RFC 7675 §5.1's consent lifetime


@dataclass(slots=True)
class ConsentTimer:
    timeout: float
    last_seen: float

    def seen(self, now: float) -> None:
        if now > self.last_seen:
            self.last_seen = now

    @property
    def deadline(self) -> float:
        return self.last_seen + self.timeout

    def expired(self, now: float) -> bool:
        return now >= self.deadline
