"""What every node reads (an origin or an edge): defaults < TOML file < ``STAGECAST_*``
environment; unknown keys fail. ``gateway.settings`` extends each section with the origin's keys
(same file, same variables)."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from relay.auth.turn import IceDirectory, NodeIce, TurnRest
from relay.messages.envelope import MessageLimits
from relay.messages.service import ChannelConfig
from relay.rtc.transport import TransportConfig

CONFIG_ENV = "STAGECAST_CONFIG"
DEFAULT_UDP_PORT = 8443  # one UDP port per node; nodes sharing a host need one each


class MediaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keyframe_interval: float = Field(0.25, gt=0, le=5)
    """Upstream keyframe requests (joins, PLIs) are coalesced to one per this many seconds."""
    video_queue_frames: int = Field(60, ge=2, le=1000)
    """Per-viewer video queue; on overflow the viewer drops to the next keyframe."""
    audio_queue_frames: int = Field(100, ge=2, le=1000)
    gop_cache_kb: int = Field(1024, ge=0, le=16384)
    """Keep each stream's current GOP (up to this many KiB) and send it, time-compressed, to a
    joining viewer when the source ignores keyframe requests (ffmpeg, OBS: a keyframe only
    every GOP), so its first picture does not wait up to a GOP (a Chromium viewer of a 2 s GOP:
    first frame p50 1.85 s -> 0.16 s, BENCHMARKS.md "GOP cache"). A source that answers
    requests is waited for instead. 0: off."""
    reassembly_wait: float = Field(0.1, gt=0, le=2)
    """How long a missing packet may hold back later frames before they are skipped."""
    layer_stale_after: float = Field(0.5, gt=0, le=5)
    """A simulcast layer that sends nothing for this long has stopped: its viewers get the next
    layer down until it sends again (from its next keyframe)."""
    rtx_max_age: float = Field(2.0, gt=0, le=10)
    """A viewer's NACKed packet is sent again only if it can arrive (its frame's age plus half
    the viewer's round trip) within this many seconds of its frame, and no keyframe went to the
    viewer after it (from there on the viewer decodes without it): later it cannot be played.
    Not shorter: a viewer on a lossy link may take a second or more to complete a keyframe
    (each retransmission can be lost too), and until it has one it shows nothing (0.5 s left a
    viewer at 30 % loss without a picture after a rendition switch:
    tests/live/test_rendition_fallback.py)."""
    rtx_playout: float = Field(2.0, gt=0, le=10)
    """A delta frame's packet only within this many seconds plus 1.5 round trips of its frame
    (capped by ``rtx_max_age``, so off by default). A receiver that lost a packet waits on it
    until it comes or a keyframe does: refusing it at 0.25 s froze viewers to the next keyframe
    at 2 % loss (relay/media/retransmit.py; BENCHMARKS.md, ``bench.adaptation``)."""
    rtx_share: float = Field(0.25, ge=0, le=1)
    """Retransmissions to a viewer may take at most this share of the media bytes sent to it."""
    viewer_keyframe_backoff: float = Field(8.0, ge=0, le=120)
    """A viewer that keeps asking for keyframes (PLI) is heard ever less often, down to once per
    this many seconds, so a viewer whose link the stream does not fit cannot make the anchor
    send keyframes for the whole room; 0: every request goes on (to the room's coalescing)."""
    viewer_transport_cc: bool = True
    """Answer transport-cc (the transport-wide sequence number extension and its feedback) when
    a viewer offers it (Chromium, Firefox): its feedback drives the viewer's bandwidth
    estimate (``GET /v1/rooms/{room}/viewers``, /metrics); without it, REMB or receiver reports."""
    viewer_estimation: bool = True
    """Keep a bandwidth estimate and a layer selector per viewer (what the three settings above
    and the rendition fallback build on). Off: no estimator, no transport-cc, no probing, no
    layer moves; each viewer stays on the layer it asked for. The baseline for their cost
    (``bench.capacity --estimation both``); leave it on in production."""
    viewer_probing: bool = True
    """Probe a transport-cc viewer on a lower layer for headroom (short clusters of RTX
    retransmissions at a higher layer's rate, ``relay/media/probe.py``), so it climbs back
    after a dip; off: only the estimate of what it is sent moves it up."""
    viewer_nack_solicit: bool = True
    """A viewer without transport-cc that NACKs a hole only once (aiortc's receiver: it asks
    again only with its next new hole) is made to send its missing list again every 0.1 s
    while it asks for repairs: one sequence number skipped in a frame and filled right after
    with a padding-only packet (``relay/media/nack_solicit.py``; ``nack_solicits`` in the viewers
    listing). A lost NACK then costs ~0.1 s + a round trip, not a freeze to its next hole."""
    viewer_nack_solicit_lossy_s: float = Field(0.1, ge=0.0, le=1.0)
    """Seconds between those holes while the viewer asks for 3 % or more of its packets (its
    retransmissions go twice then too). 0: a hole in every frame, so a lost NACK costs a frame
    and a round trip (unit simulation at 5 % loss: holes open past 150 ms 93 -> 8). 0.1 by
    default, the pace of lower loss: in the loaded bed (load 20-24, 8 interleaved pairs) 0 did
    not cut aiortc viewers' own freezes (BENCHMARKS.md, a-loss4); a quiet ``bench.adaptation
    --solicit-lossy 0`` against the default is the next step."""
    viewer_feedback_repair: bool = True
    """On by default: in the quiet bed (5 off/on pairs, ``bench.adaptation --profiles loss5-rtt40
    --viewers chromium [--no-feedback-repair]``) Chromium froze 1.4 -> 0.0 % median, less or as
    little in 5 of 5 pairs (BENCHMARKS.md, "feedback repair, quiet"). A viewer with transport-cc
    (Chromium) asks again for a hole whose NACK was lost only after its own round-trip estimate,
    which a receive-only Chromium never measures (100 ms): with the round trip that is a freeze.
    On, a media packet its transport-cc feedback reports lost and that no NACK asked for within
    20 ms is resent as if NACKed, within the same budget (``relay/media/feedback_repair.py``;
    ``feedback_repairs`` in the viewers listing). Off, such packets are still counted
    (``feedback_unasked``, ``late_nacks``, ``late_nack_ms``, ``unasked_ms``)."""
    viewer_playout_delay: bool = False
    """Off by default: in the loaded test bed (load 7-24, six off/on pairs) Chromium froze more
    with it, not less (BENCHMARKS.md, a-loss3); turn on to measure it on a quiet machine.
    Answer the playout-delay header extension when a viewer offers it (Chromium) and, while
    a viewer asks for repairs (0.5 % of its packets or more over 2 s), carry a minimum playout
    delay of one repair round (its RTT + a frame interval + a retransmission's second copy + 20
    ms, in 20 ms steps) on its frames, so a frame that waited for a retransmission is still
    played on time; released after 10 s without such loss. Clean links: nothing is sent
    (``relay/media/playout_delay.py``; ``playout_delay_ms`` in the viewers listing)."""
    viewer_playout_delay_max_ms: int = Field(200, ge=0, le=40950)
    """The largest minimum playout delay given to a lossy viewer (glass-to-glass grows by up to
    this much beyond its own target delay)."""
    viewer_playout_delay_fixed_ms: int = Field(0, ge=0, le=40950)
    """> 0: this minimum playout delay for every viewer that negotiated the extension, lossy
    or not (at most ``viewer_playout_delay_max_ms``); 0: by loss."""
    viewer_fec: bool = False
    """Forward error correction for viewers that negotiate it (red + ulpfec: Chromium,
    Safari): their video goes in RED, and while a viewer loses packets it gets ULPFEC parity
    at a level that follows its loss (none on a clean link; ``relay/media/ulpfec.py``). Off by
    default: in the quiet bed it did not cut Chromium's freezes at 2 % or 5 % loss and raised
    glass-to-glass p50 by 10-94 ms (BENCHMARKS.md, fec); libwebrtc itself sends no ULPFEC for
    H264 with NACK (without a picture id its receiver waits on every sequence number)."""
    viewer_audio_red: int = Field(2, ge=0, le=3)
    """Earlier Opus payloads each audio packet carries at most (RFC 2198 RED, as LiveKit sends
    it) for a viewer that offers ``red/48000/2`` (Chromium): a loss of up to this many packets
    in a row is rebuilt from the next packet, where a retransmission would come too late for an
    audio jitter buffer (Chromium sends no NACK for audio). Bed, Chromium at 5 % loss + 40 ms,
    4 off/on pairs (load 5-14): concealment events 103-120 -> 4-35, concealed samples 5.0 ->
    0.1 % in the least loaded pair (BENCHMARKS.md, a-red). 0: no RED. Each copy costs the
    audio's own rate again (the mixer's Opus: ~85 kbit/s) and a copy of the packet per audio
    frame and viewer (``relay/media/audio_red.py``; ``audio_red_copies`` in the viewers
    listing)."""
    viewer_audio_red_on_loss: bool = True
    """Copies only while the viewer loses 1 % of its packets or more (receiver reports and
    transport-cc; off below 0.5 %), and only as many as its estimate leaves room for beside the
    media (retransmissions' allowance). Off: every copy always: behind a 500 kbit/s link the
    180p layer plus two copies overflowed it (Chromium froze 0.0 -> 16-17 %, audio lost 0.1-0.3
    -> 3.5-3.9 %, 2 pairs; BENCHMARKS.md, a-red)."""
    native_send: bool = True
    """Send to viewers through the C loop (relay/rtc/_srtp_writer.c) when it was built: ~0.001 core
    less per viewer than the same loop in Python, which is the fallback. ``/v1/runtime`` tells
    which one runs."""


class SessionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout: float = Field(15.0, gt=0)
    """A peer that has not connected after this many seconds is dropped."""
    max_sdp_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    retry_after: int = Field(2, ge=1)
    certificate_lifetime: float = Field(86400.0, ge=60, le=29 * 86400)
    """Seconds one DTLS certificate serves all of this node's viewers before a fresh one is made
    (each viewer keeps the one it joined with; aiortc's are valid for 30 days)."""


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token_secret: str = ""
    """HMAC secret for tokens (>= 32 bytes). Empty: a random one per process (single node only)."""
    anonymous_audience: bool = True
    """Let viewers pull without a token (rooms can still be private once the API says so)."""
    token_ttl: int = Field(3600, gt=0)


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    operator_key: str = ""
    """Key for the operator API (``Authorization: Bearer KEY`` or ``X-API-Key``), an edge's
    ``/cluster`` and ``/metrics``. Empty: a random one per process, printed at start."""


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str = Field("", pattern=r"^$|^\S{16,}$")
    """Bearer credential for ``/metrics`` (Prometheus: ``authorization.credentials``), >= 16
    characters; the operator key is accepted too. Empty: the operator key only."""
    room_labels: bool = True
    """Per-room series (``room="NAME"``); false: node totals only, no room named."""
    stall_trace: float | None = Field(None, gt=0, le=10)
    """Log the event loop's stack (warning) whenever one step of it runs longer than this many
    seconds, and keep a histogram of its lateness in ``GET /v1/runtime`` (``loop_stalls``):
    a watchdog thread for finding what blocks the loop. None: off."""


class RoomSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_viewers_per_node: int | None = Field(None, ge=1)
    """Viewers this node serves at most; beyond: 503 + Retry-After. None: no limit."""


class LimitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_loop_lag: float | None = Field(0.5, gt=0)
    """New viewers get 503 + Retry-After while the event loop has run more than this many
    seconds late in the last 3 s (the node is saturated: more viewers would make every stream
    late and starve the anchors' ICE checks). None: off."""
    max_loop_busy: float | None = Field(0.8, gt=0, le=1)
    """New viewers get 503 + Retry-After while the event loop's thread has used this share of
    one core over the last 3 s (one loop cannot use more than one core). None: off."""
    gc_freeze_sessions: bool = True
    """Each second in which viewers joined, move what is alive out of the cyclic collector's
    full passes (``gc.freeze``), and unfreeze and collect once many of them have ended, at a
    calm moment: a full pass over hundreds of viewers' objects stops every stream for
    100-400 ms (relay.ops.gc_freezer)."""
    release_code_pages: bool = True
    """Unmap the shared libraries' clean code and read-only pages 2 s after start, and again
    when a session's setup brought 4 MiB of them back (looked at every 30 s): the kernel maps
    them in large folios, ~19-23 MiB resident after startup or a handshake, of which an idle
    node with one ingest runs ~6 MiB. What runs next faults back in from the page cache
    (relay.ops.code_pages). False: keep them mapped."""
    max_remote_candidates: int = Field(32, ge=1, le=1000)
    """Distinct remote ICE candidate addresses a session keeps (offer and trickle PATCHes
    together); more are ignored, and a PATCH whose new candidates are all beyond it gets 422.
    Each one makes the node send STUN checks to an address the client chose."""
    header_timeout: float = Field(10.0, gt=0, le=300)
    """Seconds a client has to send a request's headers, from connecting (or from the first
    byte of a later request on the connection); then 408 and the connection is closed."""
    body_timeout: float = Field(10.0, gt=0, le=600)
    """Seconds a client has to send a request's body once its headers are in; then 408."""
    max_slow_connections_per_address: int = Field(32, ge=1)
    """Connections one client address may keep the node waiting on for request bytes (new
    connections, unfinished headers or bodies); one more is answered 429 and closed."""
    send_timeout: float = Field(30.0, gt=0, le=600)
    """Seconds a response may wait for a client that has stopped reading it (the node's send
    buffer for it full); then the connection is dropped."""
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    """Largest request body of any kind (JSON, SDP); bigger: 413."""
    session_posts_per_second: float = Field(5.0, gt=0)
    """WHIP/WHEP POSTs a client address may make per second, sustained; beyond: 429."""
    session_post_burst: int = Field(20, ge=1)


class ClusterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = ""
    """This node's id in the cluster; empty: HOSTNAME-PID."""
    role: Literal["origin", "edge"] = "origin"
    """origin: takes anchors (``stagecast serve``); edge: pulls from ``upstream`` and serves
    viewers (``stagecast edge``, ``python -m relay``)."""
    redis_url: str = ""
    """Cluster registry, e.g. redis://redis:6379/0; empty: in-memory (a single node)."""
    key_prefix: str = "stagecast:"
    """Prefix of every Redis key and channel (several clusters can share one Redis)."""
    upstream: str = ""
    """An edge's upstream: the origin's (or a parent edge's) base URL."""
    heartbeat: float = Field(1.0, gt=0, le=30)
    """Seconds between a node's registry heartbeats (also how often it re-reads the cluster)."""
    node_ttl: float = Field(3.0, gt=0, le=120)
    """A node whose heartbeat stops is out of rotation after this many seconds."""
    max_viewers: int | None = Field(None, ge=1)
    """Viewers this node takes; a full edge redirects (307) or answers 503. None: no limit."""
    max_egress_bitrate: int | None = Field(None, ge=1)
    """Egress (bits/s) beyond which this node takes no new viewers. None: no limit."""
    idle_grace: float = Field(10.0, ge=0)
    """An edge tears a pull down after this many seconds without a local viewer."""
    silence_timeout: float = Field(3.0, gt=0)
    """An edge whose pull brings no media this long checks the upstream and ends the pull if the
    stream is gone there (an origin restart is picked up by the next viewer)."""


class TurnSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: tuple[str, ...] = ()
    """TURN URLs of a server that checks time-limited credentials made with ``secret`` (coturn
    ``use-auth-secret`` + ``static-auth-secret``), e.g. ["turn:turn.example.net:3478",
    "turns:turn.example.net:5349?transport=tcp"]. Every WHIP/WHEP 201 (and endpoint OPTIONS)
    carries them in Link headers with a fresh username/password, and so does /config.json."""
    secret: str = Field("", repr=False)
    """The secret shared with the TURN server; never sent to a client. Required with ``urls``."""
    ttl: int = Field(86400, ge=60, le=7 * 86400)
    """Seconds a credential stays valid. The TURN server refuses it afterwards (an allocation;
    a server may check refreshes too): keep it longer than your longest stream."""
    node_relay: bool = False
    """The node's own peers (anchors, viewers, an edge's pull) also gather a relayed candidate
    through the TURN server, for a node that clients cannot reach directly. Off: the node offers
    its own addresses only and TURN is for the clients. Answering sessions on the node's one UDP
    port are ICE-lite and offer that port only: there it applies to an edge's pulls (per-peer
    ports, ``webrtc.udp_port = 0``, for the node's answers too)."""

    @model_validator(mode="after")
    def _secret_with_urls(self) -> TurnSettings:
        if self.urls and not self.secret:
            raise ValueError("turn.urls needs turn.secret (the TURN server's static-auth-secret)")
        bad = [u for u in self.urls if not u.startswith(("turn:", "turns:"))]
        if bad:
            raise ValueError(f"turn.urls must be turn: or turns: URLs, got {bad}")
        return self


class MessageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(2048, ge=256, le=65536)
    """Largest frame a client may send on a room's channel (UTF-8 bytes); more: close 1009."""
    max_text: int = Field(500, ge=1, le=10000)
    """Characters of one chat line."""
    chat_per_second: float = Field(1.0, gt=0)
    """Chat lines one sender may send per second, sustained (per room, per node); beyond:
    an error frame with status 429."""
    chat_burst: int = Field(5, ge=1)
    likes_per_second: float = Field(10.0, gt=0)
    """Like frames one sender may send per second (each may carry up to 50 likes)."""
    like_burst: int = Field(20, ge=1)
    like_interval: float = Field(0.25, ge=0.02, le=10)
    """A room's like counter goes out to its subscribers at most this often (s): a flood of
    likes is counted, not fanned out one by one."""
    queue_size: int = Field(256, ge=8, le=100000)
    """Messages waiting for one socket; a slower reader loses its oldest ones."""


class WebRtcSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    udp_port: int = Field(DEFAULT_UDP_PORT, ge=0, le=65535)
    """The node's one UDP port for every WHIP/WHEP session (ICE-lite, demultiplexed by ICE
    ufrag, then by address). 0: a UDP port per peer connection (the old way, kept for a
    release). Nodes sharing a host need a port each (``--udp-port``)."""
    tcp_port: int = Field(0, ge=0, le=65535)
    """The node's one ICE-TCP port (RFC 6544 passive candidates, RFC 4571 framing) for peers
    whose networks block UDP, e.g. 8443 (TCP and UDP numbers do not clash); 0: none. Needs
    ``udp_port`` (the streams join sessions of the ICE-lite single-port transport)."""
    addresses: tuple[str, ...] = ()
    """Local addresses to offer in candidates (and to bind the UDP port to, if exactly one);
    empty: every interface's IPv4 address but loopback (e.g. ["127.0.0.1"] for loopback only)."""
    announce: tuple[str, ...] = ()
    """Public addresses or host names to put in the candidates instead (1:1 NAT, a load
    balancer in front of ``udp_port`` and ``tcp_port``, which must keep their numbers); needs
    ``udp_port``."""

    udp_max_reads: float = Field(0.0, ge=0, le=100000)
    """Reads of the UDP port a second, sustained, before it is paced (0: none, every readable
    event read at once). An audience's spread-out transport-cc feedback wakes the node for one
    or two datagrams each time; paced, what came meanwhile is read in one go, at the cost of
    up to 1 / ``udp_max_reads`` s of wait for every datagram, an anchor's media included (500:
    2 ms). Off by default until a quiet machine shows the saving (BENCHMARKS.md)."""

    udp_quiet_reads: float = Field(5.0, ge=0, le=100000)
    """Reads of the UDP port a second while nothing on the node takes media as it arrives (no
    viewer, recording, bridge, co-host tap or mixer, and no anchor steering its bitrate by our
    transport-cc feedback: e.g. one ffmpeg ingest and no viewer); 0: every readable event at
    once then too. An anchor's packets then wait up to 1 / this (200 ms), which nobody sees; a
    new session (a viewer's offer) ends it at once. Each wake-up of the node costs more than
    most of what it brings: one ffmpeg anchor's ~80 a second become 5 (BENCHMARKS.md,
    ``bench.idle``)."""

    consent_timeout: float = Field(30.0, gt=0, le=3600)
    """A WHIP/WHEP session whose peer sends no authenticated STUN and no SRTP/SRTCP for this
    many seconds ends (instead of RFC 7675 consent checks, which ffmpeg's WHIP muxer never
    answers)."""

    @model_validator(mode="after")
    def _tcp_with_udp(self) -> WebRtcSettings:
        if self.tcp_port and not self.udp_port:
            raise ValueError(
                "webrtc.tcp_port needs webrtc.udp_port: ICE-TCP streams join the sessions of the "
                "single-port (ICE-lite) transport, which a UDP port per peer connection is not"
            )
        return self


class NodeSettings(BaseSettings):
    """The keys an edge runs on; the origin's settings (``gateway.settings.Settings``) are
    these plus its own."""

    model_config = SettingsConfigDict(
        env_prefix="STAGECAST_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = ""
    """Base URL printed and handed to clients; default http(s)://HOST:PORT."""
    tls_certfile: str = ""
    """PEM certificate (chain) to serve HTTPS, with ``tls_keyfile``; ``stagecast cert`` makes a
    self-signed pair. Browsers open the camera only on HTTPS pages or localhost."""
    tls_keyfile: str = ""
    ice_servers: tuple[str, ...] = ()
    """STUN/TURN URLs for peers; empty means host candidates only."""
    cors_origin: str = "*"
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks (CIDR) of the reverse proxies in front of this node whose
    X-Forwarded-For and X-Forwarded-Proto headers are believed: for their requests the client
    address (per-address POST rate, stage requests, anonymous chat, the access log) is the one
    they name. Empty: nobody's, the client is the TCP peer (a local process or a proxy that
    passes on what clients send could otherwise pick any address). A proxy listed here must
    set the headers itself, not pass on a client's."""
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """json: one JSON object per line with room/session ids, for log collectors."""
    workers: int | None = Field(None, ge=0, le=256)
    """Processes serving this node's viewers behind its one HTTP port (``--workers``): the front
    (HTTP, API, ingest, each room's one pull) and N-1 local worker edges, worker i on UDP (and
    ICE-TCP) port ``webrtc.udp_port + i``, each pulling a room once from the front. None: 1.
    0 (``stagecast relay`` / ``python -m relay``): one per core, cut to 1 with TLS and to the
    free media ports above the node's own."""
    media: MediaSettings = MediaSettings()
    sessions: SessionSettings = SessionSettings()
    auth: AuthSettings = AuthSettings()
    api: ApiSettings = ApiSettings()
    metrics: MetricsSettings = MetricsSettings()
    rooms: RoomSettings = RoomSettings()
    limits: LimitSettings = LimitSettings()
    cluster: ClusterSettings = ClusterSettings()
    turn: TurnSettings = TurnSettings()
    messages: MessageSettings = MessageSettings()
    webrtc: WebRtcSettings = WebRtcSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @model_validator(mode="after")
    def _tls_pair(self) -> NodeSettings:
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ValueError("tls_certfile and tls_keyfile go together")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies takes addresses or networks (CIDR), not {item!r}"
                ) from None
        return value

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_certfile else "http"
        return self.public_url.rstrip("/") or f"{scheme}://{self.host}:{self.port}"


S = TypeVar("S", bound=NodeSettings)


def load_settings_as(cls: type[S], config: Path | None = None, **overrides: Any) -> S:
    """``cls`` from ``config`` (or $STAGECAST_CONFIG), then the environment, then
    ``overrides``."""
    path: Path | str | None = config or os.environ.get(CONFIG_ENV)
    if not path:
        return cls(**overrides)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} does not exist")

    class FileSettings(cls):  # type: ignore[valid-type,misc]
        model_config = SettingsConfigDict(**{**cls.model_config, "toml_file": file})

    loaded: S = FileSettings(**overrides)
    return loaded


def ephemeral_secret() -> str:
    """A per-process secret (token secret, operator key) for a node started without one. Never
    starting with "-": printed keys are pasted after ``--key``, where argparse would take one
    that does for an option."""
    while True:
        secret = secrets.token_urlsafe(48)
        if not secret.startswith("-"):
            return secret


def ice_directory(settings: NodeSettings) -> IceDirectory:
    """The ICE servers this node hands its clients (Link headers, /config.json)."""
    t = settings.turn
    turn = TurnRest(t.urls, t.secret, t.ttl) if t.urls else None
    return IceDirectory(settings.ice_servers, turn)


def node_ice(settings: NodeSettings) -> NodeIce:
    """The ICE servers the node's own peer connections use: ``ice_servers``, plus TURN with a
    credential per peer when ``turn.node_relay`` is on."""
    if settings.turn.node_relay and settings.turn.urls:
        return ice_directory(settings)
    return settings.ice_servers


def channel_config(settings: NodeSettings) -> ChannelConfig:
    """The room channels' limits from ``[messages]``."""
    m = settings.messages
    return ChannelConfig(
        limits=MessageLimits(max_bytes=m.max_bytes, max_text=m.max_text),
        chat_per_second=m.chat_per_second,
        chat_burst=m.chat_burst,
        likes_per_second=m.likes_per_second,
        like_burst=m.like_burst,
        like_interval=m.like_interval,
        queue_size=m.queue_size,
    )


def transport_config(settings: NodeSettings) -> TransportConfig:
    """What the node's WebRTC transport (relay.rtc.transport) takes from the settings."""
    return TransportConfig(
        ice_servers=node_ice(settings),
        consent_timeout=settings.webrtc.consent_timeout,
        udp_port=settings.webrtc.udp_port,
        udp_max_reads=settings.webrtc.udp_max_reads,
        udp_quiet_reads=settings.webrtc.udp_quiet_reads,
        tcp_port=settings.webrtc.tcp_port,
        addresses=settings.webrtc.addresses,
        announce=settings.webrtc.announce,
    )
