"""The node's WebRTC transport policy: how every answering peer connection (anchors' WHIP,
viewers' WHEP) gets its ICE candidates and keeps its consent. Owned by the app's lifespan.

``udp_port`` 0: each peer connection binds its own UDP sockets (aioice's way), on ``addresses``
(default: every interface but loopback). Otherwise the node binds that one port at start and
answers every session on it as ICE-lite (``relay.rtc.shared_port``); sessions whose offer has no
BUNDLE (one ICE transport per m-line, all with the same ufrag) fall back to their own sockets.
``tcp_port`` (needs ``udp_port``): those sessions also offer ICE-TCP passive candidates on that
one TCP port (``relay.rtc.tcp_port``), for peers that cannot use UDP.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from aioice.ice import get_host_addresses
from aiortc import RTCCertificate, RTCPeerConnection
from aiortc.rtcicetransport import parse_stun_turn_uri

from relay.auth.turn import NodeIce
from relay.media.consent import DEFAULT_CONSENT_TIMEOUT
from relay.rtc.adapter import (
    install_shared_port,
    install_traffic_consent,
    new_peer_connection,
    offer_addresses,
    use_lazy_receive_estimators,
)
from relay.rtc.peer import rtc_configuration
from relay.rtc.shared_port import SharedUdpPort, family_of
from relay.rtc.tcp_port import SharedTcpPort

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TransportConfig:
    ice_servers: NodeIce = ()
    consent_timeout: float = DEFAULT_CONSENT_TIMEOUT
    """A session whose peer sends no authenticated STUN and no SRTP/SRTCP this long ends."""
    udp_port: int = 0
    """The node's one UDP port for every session (ICE-lite); 0: a port per peer connection."""
    udp_max_reads: float = 0.0
    """Reads of that port a second before they are paced (``SharedUdpPort.max_reads``; 0: no
    pacing)."""
    udp_quiet_reads: float = 5.0
    """... and while the node is quiet (``SharedUdpPort.quiet_reads``; 0: no quiet pacing)."""
    tcp_port: int = 0
    """The node's one ICE-TCP port beside ``udp_port`` (RFC 6544 passive); 0: no ICE-TCP."""
    addresses: tuple[str, ...] = ()
    """Local addresses to offer (and, if exactly one of a family, for the shared port to bind;
    an IPv6 address opens an IPv6 socket on the same port); empty: every interface's IPv4
    address but loopback."""
    announce: tuple[str, ...] = ()
    """Addresses or host names put in the shared port's host candidates instead of the local
    ones (1:1 NAT, a load balancer's address); names are resolved at start."""


class NodeTransport:
    """Creates and prepares the peer connections a node answers with."""

    def __init__(self, config: TransportConfig | None = None) -> None:
        self.config = config or TransportConfig()
        self.port: SharedUdpPort | None = None
        self.tcp: SharedTcpPort | None = None
        self.hosts: list[str] = []  # the shared port's advertised addresses
        self.fallbacks = 0  # sessions that could not use the shared port (no BUNDLE)

    async def start(self) -> None:
        c = self.config
        if c.udp_port == 0 or self.port is not None:
            return
        if c.announce:
            hosts = await _resolve(c.announce)
        elif c.addresses:
            hosts = list(c.addresses)
        else:
            hosts = get_host_addresses(use_ipv4=True, use_ipv6=False) or ["127.0.0.1"]
        port = SharedUdpPort(max_reads=c.udp_max_reads, quiet_reads=c.udp_quiet_reads)
        try:
            if c.announce:  # the candidates are not local: every address of each family
                for family, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                    if any(family_of(h) == family for h in hosts):
                        await port.open(wildcard, c.udp_port)
            else:  # a socket on each address offered: answers leave from the address asked
                for host in dict.fromkeys(hosts):
                    await port.open(host, c.udp_port)
        except OSError:
            port.close()
            raise
        self.port = port
        if c.tcp_port:
            bind = c.addresses[0] if len(c.addresses) == 1 else "0.0.0.0"
            tcp = SharedTcpPort()
            try:
                await tcp.open(bind, c.tcp_port)
            except OSError:
                self.close_ports()
                raise
            self.tcp = tcp
        self.hosts = hosts
        if not c.announce and socket.AF_INET in port.families:
            public = await self._discover(port)
            if public is not None and public not in self.hosts:
                self.hosts.append(public)
        log.info("WebRTC on UDP port %d (ICE-lite), candidates %s", port.port, self.hosts)
        if self.tcp is not None:
            log.info("ICE-TCP on TCP port %d (passive candidates)", self.tcp.port)

    async def _discover(self, port: SharedUdpPort) -> str | None:
        """The node's public address from the first STUN server in ``ice_servers``: what
        per-peer ports got as a server-reflexive candidate. An ICE-lite node offers host
        candidates only, so it becomes one (right for a 1:1 NAT, which keeps the port)."""
        servers = self.config.ice_servers
        urls = (
            [u for u in servers if u.startswith("stun:")]
            if isinstance(servers, (tuple, list))
            else []
        )
        server = _stun_server(urls[0]) if urls else None
        if server is None:
            return None
        try:
            hosts = [h for h in await _resolve((server[0],)) if family_of(h) == socket.AF_INET]
            mapped = await port.mapped_address((hosts[0], server[1]))
        except (OSError, IndexError, ValueError) as exc:
            log.warning("STUN server %s:%d: %r; set webrtc.announce", *server, exc)
            return None
        if mapped is None:
            log.warning("no answer from STUN server %s:%d; set webrtc.announce", *server)
            return None
        if mapped[1] != port.port:
            log.warning(
                "the NAT maps UDP port %d to %d: clients cannot reach this node's port "
                "(use a 1:1 NAT or a UDP load balancer with webrtc.announce)",
                port.port,
                mapped[1],
            )
            return None
        return mapped[0]

    async def close(self) -> None:
        self.close_ports()

    def close_ports(self) -> None:
        if self.tcp is not None:
            self.tcp.close()
            self.tcp = None
        if self.port is not None:
            self.port.close()
            self.port = None

    @property
    def udp_port(self) -> int | None:
        """The shared port's number once open (None: a port per peer connection)."""
        return self.port.port if self.port is not None else None

    @property
    def tcp_port(self) -> int | None:
        """The ICE-TCP port's number once open (None: no ICE-TCP)."""
        return self.tcp.port if self.tcp is not None else None

    def peer_connection(self, certificate: RTCCertificate | None = None) -> RTCPeerConnection:
        """A new peer connection; with ``certificate`` (the node's) it does DTLS with that one
        and aiortc makes none of its own. Its receivers build their bandwidth estimator on
        their first packet (a viewer's never receive)."""
        use_lazy_receive_estimators()
        configuration = rtc_configuration(self.config.ice_servers)
        if certificate is None:
            return RTCPeerConnection(configuration)
        return new_peer_connection(configuration, certificate)

    async def prepare_answer(self, pc: RTCPeerConnection) -> None:
        """Call after ``setRemoteDescription(offer)``, before the answer is created."""
        port = self.port
        shared = port is not None and install_shared_port(pc, port, self.hosts, self.tcp)
        if not shared:
            if port is not None:
                self.fallbacks += 1
            if self.config.addresses:
                offer_addresses(pc, list(self.config.addresses))
        install_traffic_consent(pc, self.config.consent_timeout)


async def _resolve(names: tuple[str, ...]) -> list[str]:
    loop = asyncio.get_running_loop()
    hosts: list[str] = []
    for name in names:
        infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)  # IPv4 and IPv6
        for info in infos:
            host = str(info[4][0])
            if host not in hosts:
                hosts.append(host)
    return hosts


def _stun_server(url: str) -> tuple[str, int] | None:
    try:
        parsed = parse_stun_turn_uri(url)
    except ValueError:
        return None
    return str(parsed["host"]), int(parsed["port"])
