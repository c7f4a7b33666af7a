"""Which remote ICE candidates a session may make this node contact (sans-I/O).

Every remote candidate makes the node send STUN checks (seven transmissions over ~30 s each) to
an address the client chose. An anonymous WHEP offer listing 700 candidates once made a node
send ~3,000 requests to 700 addresses: an amplifier aimed at anyone. So a session keeps at most
``max_per_session`` distinct candidate addresses (offer and every trickle PATCH together;
RFC 8445 section 5.1.3 lets an agent limit them), and candidates the node must never contact are
dropped: non-IP hosts (mDNS names would cost a multicast query each), unspecified, multicast,
broadcast, link-local and reserved addresses, ports below ``min_port``, the node's own service
ports (``blocked_ports``: its HTTP port, its Redis port) and transports other than UDP and TCP.
Loopback stays allowed (a node and its clients on one machine, as in the tests).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

CandidateKey = tuple[int, str, str, int]  # (component, transport, canonical address, port)

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_TRANSPORTS = frozenset({"udp", "tcp"})
_CANDIDATE = "a=candidate:"


@dataclass(frozen=True, slots=True)
class CandidatePolicy:
    max_per_session: int = 32
    """Distinct remote candidate addresses one session keeps (offer + trickle)."""
    min_port: int = 1024
    """Lower ports are services (DNS, NTP, ...), never a WebRTC client's candidate."""
    blocked_ports: frozenset[int] = frozenset()
    """The node's own service ports, refused at any address."""
    check_interval: float = 0.05
    """Seconds between the starts of a session's ordinary checks (RFC 8445's Ta, 50 ms; aioice
    starts one every 20 ms)."""


def service_ports(http_port: int, redis_url: str = "") -> frozenset[int]:
    """The ports a node serves on or depends on: its HTTP port and its Redis port if any."""
    ports = {http_port} if http_port else set()
    if redis_url:
        with contextlib.suppress(ValueError):  # a malformed port: nothing to block
            ports.add(urlsplit(redis_url).port or 6379)
    return frozenset(ports)


DEFAULT_POLICY = CandidatePolicy()


def node_policy(max_per_session: int, http_port: int, redis_url: str = "") -> CandidatePolicy:
    """The policy of a node serving HTTP on ``http_port`` (and using Redis at ``redis_url``)."""
    return CandidatePolicy(
        max_per_session=max_per_session, blocked_ports=service_ports(http_port, redis_url)
    )


def candidate_key(value: str, policy: CandidatePolicy) -> CandidateKey | None:
    """The key of an ``a=candidate`` attribute value (without ``a=candidate:``) that the node
    may contact, or None when it must be dropped (unusable, or malformed)."""
    fields = value.split()
    if len(fields) < 8 or fields[6] != "typ":
        return None
    component, transport, host, port_text = fields[1], fields[2].lower(), fields[4], fields[5]
    if transport not in _TRANSPORTS or not component.isdigit() or not port_text.isdigit():
        return None
    port = int(port_text)
    if not policy.min_port <= port <= 65535 or port in policy.blocked_ports:
        return None
    try:
        address = ipaddress.ip_address(host)  # refuses names (mDNS too) and zone ids
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if (
        address.is_unspecified
        or address.is_multicast
        or address.is_link_local
        or address == _BROADCAST
        or (address.version == 4 and address.packed[0] == 0)  # "this network", 0.0.0.0/8
        or (address.is_reserved and not address.is_loopback)
    ):
        return None
    return int(component), transport, str(address), port


@dataclass(frozen=True, slots=True)
class Screening:
    """The verdict on a batch of candidate values, in their order."""

    accepted: tuple[int, ...]  # indexes of the values to pass on
    duplicates: int  # same address as one the session has: ignored (RFC 8838 section 9)
    unusable: int  # addresses the node must never contact
    over_limit: int  # new addresses beyond the session's maximum
    known: frozenset[CandidateKey]  # the session's candidate addresses after this batch

    @property
    def dropped(self) -> int:
        return self.unusable + self.over_limit


def screen(
    values: Iterable[str],
    policy: CandidatePolicy,
    known: Iterable[CandidateKey] = (),
    *,
    keep_duplicates: bool = False,
) -> Screening:
    """Decide for each candidate value whether the session takes it, given the addresses it
    already has (``known``). ``keep_duplicates`` passes a repeated address on (an offer lists
    the same candidates in each bundled media section); it never counts twice."""
    have = set(known)
    accepted: list[int] = []
    duplicates = unusable = over = 0
    for i, value in enumerate(values):
        key = candidate_key(value, policy)
        if key is None:
            unusable += 1
        elif key in have:
            duplicates += 1
            if keep_duplicates:
                accepted.append(i)
        elif len(have) >= policy.max_per_session:
            over += 1
        else:
            have.add(key)
            accepted.append(i)
    return Screening(tuple(accepted), duplicates, unusable, over, frozenset(have))


def sdp_candidates(text: str) -> list[str]:
    """The ``a=candidate`` values of an SDP (every media section)."""
    return [
        line.strip()[len(_CANDIDATE) :] for line in text.splitlines() if line.startswith(_CANDIDATE)
    ]


def known_keys(text: str, policy: CandidatePolicy) -> frozenset[CandidateKey]:
    """The candidate addresses an SDP (a session's remote description) holds."""
    keys = (candidate_key(v, policy) for v in sdp_candidates(text))
    return frozenset(k for k in keys if k is not None)


def filter_offer(text: str, policy: CandidatePolicy) -> tuple[str, Screening]:
    """The offer without the candidates the session may not keep, and the verdict."""
    lines = text.splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.startswith(_CANDIDATE)]
    verdict = screen(
        (lines[i].strip()[len(_CANDIDATE) :] for i in at), policy, keep_duplicates=True
    )
    if len(verdict.accepted) == len(at):
        return text, verdict
    drop = {at[i] for i in range(len(at))} - {at[i] for i in verdict.accepted}
    return "".join(line for i, line in enumerate(lines) if i not in drop), verdict
