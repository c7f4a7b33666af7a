"""Per-client token buckets for signalling POSTs: a flood from one address gets 429s, not CPU."""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict


def client_key(address: str) -> str:
    """What per-client limits count by: an IPv4 address, or an IPv6 address's /64 (one host
    commonly holds a whole /64, and would otherwise get 2**64 separate allowances)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP address (a Unix socket peer, "unknown"): as it is
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ClientRateLimiter:
    """``rate`` requests per second with bursts of ``burst``, per key (client address).

    Keeps at most ``max_keys`` buckets (least recently seen evicted), so memory stays bounded
    whatever the number of addresses."""

    def __init__(self, rate: float, burst: int, *, max_keys: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, t)

    def check(self, key: str, now: float) -> int | None:
        """None when allowed; otherwise the whole seconds to wait (for Retry-After)."""
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        if allowed:
            return None
        return max(1, math.ceil((1.0 - tokens) / self.rate))
