"""The node's DTLS certificate: one for every peer connection, replaced after a lifetime."""

from __future__ import annotations

import time
from collections.abc import Callable

from relay.rtc.adapter import NodeCertificate

DEFAULT_LIFETIME = 24 * 3600.0  # aiortc's certificates are valid for 30 days


class RotatingCertificate:
    """Hands out the current certificate, generating a fresh one once the current is
    ``lifetime`` s old (a peer connection keeps the one it started with). Generating costs
    ~0.2 ms, once a lifetime instead of once per peer connection."""

    def __init__(
        self,
        lifetime: float = DEFAULT_LIFETIME,
        *,
        clock: Callable[[], float] = time.monotonic,
        make: Callable[[], NodeCertificate] = NodeCertificate.generateCertificate,
    ) -> None:
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self.lifetime = lifetime
        self._clock = clock
        self._make = make
        self._certificate = make()
        self._born = clock()
        self.rotations = 0

    def current(self) -> NodeCertificate:
        now = self._clock()
        if now - self._born >= self.lifetime:
            self._certificate = self._make()
            self._born = now
            self.rotations += 1
        return self._certificate
