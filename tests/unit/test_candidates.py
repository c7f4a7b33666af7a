"""Which remote ICE candidates a session keeps (relay/rtc/candidates.py), and the aioice names
the check pacing wraps (relay/rtc/adapter.py). tests/live/test_candidate_limits.py counts the STUN
checks a real node sends."""

from __future__ import annotations

from relay.rtc.candidates import (
    CandidatePolicy,
    candidate_key,
    filter_offer,
    known_keys,
    screen,
    service_ports,
)


def cand(host: str, port: int, *, transport: str = "udp", foundation: int = 1) -> str:
    return f"{foundation} 1 {transport} 2130706431 {host} {port} typ host"


def test_unusable_addresses_are_dropped() -> None:
    policy = CandidatePolicy(blocked_ports=frozenset({8080, 6379}))
    refused = [
        cand("0.0.0.0", 5000),
        cand("0.1.2.3", 5000),
        cand("::", 5000),
        cand("224.0.0.251", 5353),
        cand("239.1.2.3", 5000),
        cand("ff02::1", 5000),
        cand("255.255.255.255", 5000),
        cand("169.254.1.1", 5000),
        cand("fe80::1", 5000),
        cand("fe80::1%eth0", 5000),
        cand("240.0.0.1", 5000),
        cand("abc.local", 5000),
        cand("example.com", 5000),
        cand("127.0.0.1", 0),
        cand("127.0.0.1", 53),
        cand("127.0.0.1", 70000),
        cand("10.0.0.1", 8080),
        cand("127.0.0.1", 6379),
        cand("127.0.0.1", 5000, transport="sctp"),
        "1 1 udp 1 127.0.0.1 5000 host",  # no "typ"
        "1 x udp 1 127.0.0.1 5000 typ host",
        "garbage",
    ]
    for value in refused:
        assert candidate_key(value, policy) is None, value
    allowed = [
        cand("127.0.0.1", 5000),
        cand("::1", 5000),
        cand("192.0.2.7", 40000),
        cand("2001:db8::7", 40000),
        cand("100.64.1.1", 40000),
        cand("127.0.0.1", 9, transport="tcp").replace(" 9 ", " 9000 "),
    ]
    for value in allowed:
        assert candidate_key(value, policy) is not None, value
    # an IPv4-mapped address is the IPv4 address (the same key, the same rules)
    assert candidate_key(cand("::ffff:127.0.0.1", 5000), policy) == candidate_key(
        cand("127.0.0.1", 5000), policy
    )
    assert candidate_key(cand("::ffff:224.0.0.1", 5000), policy) is None


def test_session_keeps_at_most_its_maximum_of_distinct_addresses() -> None:
    policy = CandidatePolicy(max_per_session=4)
    values = [cand("127.0.0.1", 5000 + i) for i in range(10)]
    first = screen(values[:3], policy)
    assert first.accepted == (0, 1, 2) and first.over_limit == 0
    second = screen(values[:6], policy, first.known)  # 3 known again, 3 new: room for 1
    assert second.duplicates == 3 and second.accepted == (3,) and second.over_limit == 2
    assert len(second.known) == 4
    third = screen([values[0], "garbage"], policy, second.known)
    assert third.accepted == () and third.duplicates == 1 and third.unusable == 1


def test_filter_offer_keeps_bundled_repeats_and_drops_the_rest() -> None:
    policy = CandidatePolicy(max_per_session=2)
    lines = [cand("127.0.0.1", 5000), cand("127.0.0.1", 5001), cand("127.0.0.1", 5002)]
    section = "".join(f"a=candidate:{v}\r\n" for v in lines)
    offer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n" + section
    offer += "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + section + "a=candidate:1 1 udp 1 x.local 9\r\n"
    text, verdict = filter_offer(offer, policy)
    assert text.count("a=candidate:") == 4  # two addresses, listed in both sections
    assert "5002" not in text and ".local" not in text
    assert verdict.over_limit == 2 and verdict.unusable == 1 and len(verdict.known) == 2
    assert known_keys(text, policy) == verdict.known
    assert filter_offer(text, policy)[0] == text  # nothing left to drop


def test_service_ports() -> None:
    assert service_ports(8080, "redis://r:7000/0") == {8080, 7000}
    assert service_ports(8080, "redis://r/0") == {8080, 6379}
    assert service_ports(8080, "") == {8080}
    assert service_ports(0, "redis://r:bad") == set()


def test_aioice_internals_the_pacing_relies_on() -> None:
    """Fails loudly if an aioice/aiortc upgrade moves what relay/rtc/adapter.py's
    guard_ice_checks wraps (tests/live/test_candidate_limits.py checks what they do)."""
    from aioice.ice import Connection, StunProtocol
    from aiortc.rtcicetransport import RTCIceTransport

    assert "_check_periodic" in Connection.connect.__code__.co_names
    assert callable(Connection._check_periodic)
    assert "_check_list_done" in Connection.__init__.__code__.co_names
    assert "_connection" in RTCIceTransport.__init__.__code__.co_names
    assert "request_received" in StunProtocol.datagram_received.__code__.co_names
    assert "_remote_candidates" in Connection.check_incoming.__code__.co_names
    assert "_network_host" in Connection.check_incoming.__code__.co_names
