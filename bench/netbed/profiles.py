"""Named link profiles for one leg (anchor <-> gateway or gateway <-> viewer).

``up`` is the endpoint-to-gateway direction, ``down`` the gateway-to-endpoint one. Loss and delay
apply to both directions (an RTT splits evenly); a rate limit (tbf, both directions) may change
during a run: ``rate_steps`` are (share of the run elapsed, kbps or None for unlimited).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.netbed.impairment import GilbertElliott, LinkSpec


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    up: LinkSpec = field(default_factory=LinkSpec)
    down: LinkSpec = field(default_factory=LinkSpec)
    rate_kbps: int | None = None
    rate_steps: tuple[tuple[float, int | None], ...] = ()

    def __post_init__(self) -> None:
        if self.rate_kbps is not None and self.rate_kbps < 8:
            raise ValueError("rate_kbps must be at least 8")
        shares = [at for at, _ in self.rate_steps]
        if shares != sorted(shares) or any(not 0 <= s <= 1 for s in shares):
            raise ValueError("rate_steps must be in order, at shares of the run within 0..1")

    def rate_schedule(self, seconds: float) -> list[tuple[float, int | None]]:
        """(seconds into a run of ``seconds``, kbps or None) at which to change the rate."""
        return [(at * seconds, kbps) for at, kbps in self.rate_steps]


def symmetric(name: str, description: str, spec: LinkSpec) -> Profile:
    """The same impairment in both directions."""
    return Profile(name, description, up=spec, down=spec)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("clean", "no impairment"),
        symmetric("loss2", "2 % random loss", LinkSpec(loss=0.02)),
        symmetric(
            "loss5-rtt40",
            "5 % random loss, 40 ms RTT +-10 ms jitter",
            LinkSpec(loss=0.05, delay_ms=20.0, jitter_ms=5.0),
        ),
        symmetric(
            "burst3",
            "3 % burst loss (Gilbert-Elliott, mean burst 5 packets)",
            LinkSpec(burst=GilbertElliott.from_burst(0.03, 5.0)),
        ),
        Profile("1mbps", "1 Mbit/s bottleneck (tbf)", rate_kbps=1000),
        Profile("500kbps", "500 kbit/s bottleneck (tbf)", rate_kbps=500),
        symmetric("rtt300", "300 ms RTT", LinkSpec(delay_ms=150.0)),
        Profile(
            "drop400",
            "drops to 400 kbit/s for the middle third of the run (10 s of 30 s), then recovers",
            rate_steps=((1 / 3, 400), (2 / 3, None)),
        ),
    )
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
