"""Checks an SDP offer before any peer connection exists, so bad input costs nothing to refuse."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal, cast

from aiortc import RTCIceCandidate
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import CODECS
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.sdp import candidate_from_sdp

from relay.errors import BadSdp, Unprocessable
from relay.media.frames import MediaKind

Role = Literal["publish", "view"]

# What a client may offer, per role: an anchor sends, a viewer receives.
_DIRECTIONS: dict[Role, frozenset[str]] = {
    "publish": frozenset({"sendonly", "sendrecv"}),
    "view": frozenset({"recvonly", "sendrecv"}),
}
SUPPORTED_CODECS: dict[MediaKind, tuple[str, ...]] = {
    "video": ("H264", "VP8"),
    "audio": ("opus",),
}


RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
SDES_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
SIMULCAST_EXTENSIONS = (SDES_MID, RTP_STREAM_ID, REPAIRED_RTP_STREAM_ID)
MAX_LAYERS = 3


@dataclass(frozen=True, slots=True)
class SimulcastOffer:
    """A publisher's simulcast (RFC 8853): its video layers' rids in the offer's order, and
    the header extensions (id, uri) that name them, which the answer must keep."""

    rids: tuple[str, ...]
    extensions: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class OfferSummary:
    """What an offer asks for: per kind, the codec names it lists (in its order)."""

    codecs: dict[MediaKind, tuple[str, ...]]
    ice_ufrag: str
    ice_pwd: str
    simulcast: SimulcastOffer | None = None
    transport_cc: bool = False
    """Its video offers ``transport-cc`` feedback: a sender with its own bandwidth estimator
    (libwebrtc browsers: Chromium, Safari; Firefox), the kind ``x-google-start-bitrate`` is for;
    ffmpeg, OBS, GStreamer and aiortc offer REMB at most."""

    @property
    def kinds(self) -> tuple[MediaKind, ...]:
        return tuple(self.codecs)


def decode_body(body: bytes, *, max_bytes: int) -> str:
    if len(body) > max_bytes:
        raise BadSdp(f"SDP body of {len(body)} bytes exceeds the limit of {max_bytes}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadSdp("SDP is not valid UTF-8") from exc
    if not text.strip():
        raise BadSdp("empty SDP")
    return text


def check_offer(text: str, role: Role) -> OfferSummary:
    """Parse and vet an offer completely, so that aiortc accepts whatever passes; raises BadSdp
    (400: malformed) or Unprocessable (422: well formed, but not something we can answer)."""
    if not text.startswith("v=0"):
        raise BadSdp("SDP must start with v=0")
    for line in text.splitlines():
        if line and not _LINE.fullmatch(line):
            raise BadSdp(f"not an SDP line (type=value, no control characters): {line[:40]!r}")
    try:
        desc = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises whatever the bad line triggers
        raise BadSdp(f"SDP could not be parsed: {type(exc).__name__}") from exc
    try:  # aiortc writes the offer back out (``pc.remoteDescription``): e.g. ``c=IN IP4 a``
        str(desc)  # parses, but raises there, in the middle of the answer
    except Exception as exc:
        raise BadSdp(f"SDP could not be read back: {type(exc).__name__}") from exc
    if not desc.media:
        raise BadSdp("SDP has no media section")
    codecs: dict[MediaKind, tuple[str, ...]] = {}
    mids: list[str] = []
    transport_cc = False
    for media in desc.media:
        if media.kind not in ("audio", "video"):
            raise Unprocessable(f"media kind {media.kind!r} is not supported")
        kind = cast(MediaKind, media.kind)
        if kind in codecs:
            raise Unprocessable(f"only one {kind} section is supported")
        if not media.profile.endswith(_PROFILES):
            raise Unprocessable(f"{kind} section's profile {media.profile} is not DTLS-SRTP")
        if media.direction not in _DIRECTIONS[role]:
            want = " or ".join(sorted(_DIRECTIONS[role]))
            raise Unprocessable(f"{kind} section is {media.direction}; expected {want}")
        mid = media.rtp.muxId
        if not mid:
            raise BadSdp(f"{kind} section lacks a mid")
        if not _MID.fullmatch(mid):
            raise BadSdp(f"{kind} section's mid is not 1-16 token characters")
        if mid in mids:
            raise BadSdp(f"mid {mid!r} names two sections")
        mids.append(mid)
        if not media.rtcp_mux:
            raise Unprocessable(f"{kind} section lacks a=rtcp-mux (RFC 8834 requires it)")
        _check_ice(media, kind)
        _check_dtls(media, kind)
        _check_rtp(media, kind)
        usable = _usable_codecs(media)
        if not usable:
            want = ", ".join(SUPPORTED_CODECS[kind])
            raise Unprocessable(f"{kind} offers none of the supported codecs ({want})")
        codecs[kind] = usable
        if kind == "video":
            transport_cc = any(
                fb.type == "transport-cc" for c in media.rtp.codecs for fb in c.rtcpFeedback
            )
    _check_bundle(desc, mids)
    simulcast = check_simulcast(text, desc, role)
    first = desc.media[0].ice
    assert first is not None and first.usernameFragment and first.password
    return OfferSummary(
        codecs=codecs,
        ice_ufrag=first.usernameFragment,
        ice_pwd=first.password,
        simulcast=simulcast,
        transport_cc=transport_cc,
    )


# RFC 8851 rid-id (1*(alpha-numeric / "-" / "_")), at most the 16 bytes the RtpStreamId
# header extension carries in the one-byte form (RFC 8285).
_RID = re.compile(r"[A-Za-z0-9_-]{1,16}")
_RID_PARAM = re.compile(r"[A-Za-z0-9_-]{1,32}(=[^;\s]{1,64})?")


def _section_lines(text: str) -> list[tuple[str, list[str]]]:
    """(kind, attribute lines) of each m-section, in order."""
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("m="):
            sections.append((line[2:].split(" ", 1)[0], []))
        elif sections and line.startswith("a="):
            sections[-1][1].append(line[2:])
    return sections


def check_simulcast(
    text: str, desc: aiortc_sdp.SessionDescription, role: Role
) -> SimulcastOffer | None:
    """A publisher's simulcast video (``a=rid`` + ``a=simulcast:send``, RFC 8851/8853), vetted:
    BadSdp (400) for syntax errors, rids the ``a=simulcast`` line names but no ``a=rid:.. send``
    declares, and repeated rids; Unprocessable (422) for more than MAX_LAYERS layers,
    alternatives, simulcast on audio or to a viewer, or no RtpStreamId header extension to tell
    the layers apart. None: not simulcast (``a=rid`` alone restricts one stream; it is ignored)."""
    found: SimulcastOffer | None = None
    for (kind, attrs), media in zip(_section_lines(text), desc.media, strict=False):
        rids: dict[str, str] = {}
        lines = [a[len("simulcast:") :] for a in attrs if a.startswith("simulcast:")]
        for attr in attrs:
            if attr.startswith("rid:"):
                rid, direction = _parse_rid(attr[len("rid:") :], media)
                if rid in rids:
                    raise BadSdp(f"{kind} section declares rid {rid!r} twice")
                rids[rid] = direction
        if not lines:
            continue
        if len(lines) > 1:
            raise BadSdp(f"{kind} section has more than one a=simulcast line")
        if kind != "video":
            raise Unprocessable(f"simulcast is supported for video only, not {kind}")
        if role != "publish":
            raise Unprocessable("simulcast is for publishing; a viewer gets one layer")
        layers = _parse_simulcast(lines[0])
        for rid in layers:
            if rids.get(rid) != "send":
                raise BadSdp(f"a=simulcast names rid {rid!r}, which no a=rid:{rid} send declares")
        if len(layers) > MAX_LAYERS:
            raise Unprocessable(f"{len(layers)} simulcast layers; at most {MAX_LAYERS} are taken")
        extensions = tuple(
            (ext.id, ext.uri)
            for ext in media.rtp.headerExtensions
            if ext.uri in SIMULCAST_EXTENSIONS
        )
        if RTP_STREAM_ID not in {uri for _, uri in extensions}:
            raise Unprocessable(
                f"simulcast without the {RTP_STREAM_ID} header extension: the layers could "
                "not be told apart"
            )
        found = SimulcastOffer(layers, extensions)
    return found


def _parse_rid(value: str, media: aiortc_sdp.MediaDescription) -> tuple[str, str]:
    """``<rid-id> SP <send|recv> [SP params]`` (RFC 8851 section 10); (rid, direction)."""
    fields = value.split(" ")
    if len(fields) not in (2, 3) or not _RID.fullmatch(fields[0]):
        raise BadSdp(f"a=rid:{value[:40]!r} is not '<rid-id> send|recv [params]' (RFC 8851)")
    rid, direction = fields[0], fields[1]
    if direction not in ("send", "recv"):
        raise BadSdp(f"a=rid:{rid} has direction {direction[:16]!r}, not send or recv")
    if len(fields) == 3:
        for param in fields[2].split(";"):
            if not _RID_PARAM.fullmatch(param):
                raise BadSdp(f"a=rid:{rid} has a malformed restriction {param[:40]!r}")
            key, _, val = param.partition("=")
            if key == "pt":
                pts = val.split(",")
                if not all(p.isdigit() and int(p) in media.fmt for p in pts):
                    raise BadSdp(f"a=rid:{rid} restricts to a payload type the section lacks")
    return rid, direction


def _parse_simulcast(value: str) -> tuple[str, ...]:
    """``send <rid>;<rid>...`` (RFC 8853 section 5.1); the rids, a paused one (``~``) too."""
    parts = value.split(" ")
    if len(parts) == 4 and {parts[0], parts[2]} == {"send", "recv"}:
        raise Unprocessable("a=simulcast with a recv part: a publisher only sends")
    if len(parts) != 2 or parts[0] not in ("send", "recv"):
        raise BadSdp(f"a=simulcast:{value[:40]!r} is not 'send <rid>;<rid>...' (RFC 8853)")
    if parts[0] != "send":
        raise Unprocessable("a=simulcast:recv: a publisher only sends")
    rids: list[str] = []
    for entry in parts[1].split(";"):
        if "," in entry:
            raise Unprocessable("simulcast alternatives (rid,rid) are not supported")
        rid = entry.removeprefix("~")
        if not _RID.fullmatch(rid):
            raise BadSdp(f"a=simulcast names {entry[:20]!r}, which is not a rid-id")
        if rid in rids:
            raise BadSdp(f"a=simulcast names rid {rid!r} twice")
        rids.append(rid)
    return tuple(rids)


def with_simulcast(answer: str, simulcast: SimulcastOffer | None) -> str:
    """An SDP answer whose video section receives the offer's layers: ``a=rid:<id> recv`` for
    each and ``a=simulcast:recv`` naming them, in the offer's order (RFC 8853 section 5.3).
    aiortc writes neither; without them a browser sends one layer only."""
    if simulcast is None:
        return answer
    lines = answer.splitlines(keepends=True)
    out: list[str] = []
    video = False
    eol = "\r\n"

    def add() -> None:
        out.extend(f"a=rid:{rid} recv{eol}" for rid in simulcast.rids)
        out.append(f"a=simulcast:recv {';'.join(simulcast.rids)}{eol}")

    for line in lines:
        if line.startswith("m="):
            if video:
                add()
            video = line.startswith("m=video")
        out.append(line)
    if video:
        add()
    return "".join(out)


# RFC 8866 lines: one lower-case type letter, "=", then text without control characters.
_LINE = re.compile(r"[a-z]=[^\x00-\x08\x0a-\x1f\x7f]*")
# RFC 8843 identification-tag (an RFC 8866 token); 16 bytes is what the RTP MID header
# extension carries (RFC 8285 one-byte form).
_MID = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]{1,16}")
_CODEC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,31}")
# RFC 8839 section 5.4: ice-char, ufrag 4-256, pwd 22-256.
_ICE_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}")
_ICE_PWD = re.compile(r"[A-Za-z0-9+/]{22,256}")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]{1,256}")
# RFC 8122 hash functions and their digest sizes in bytes.
_FINGERPRINT_BYTES = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")
_PROFILES = ("RTP/SAVPF", "RTP/SAVP")  # UDP/TLS/RTP/SAVPF, TCP/DTLS/RTP/SAVPF, ...
_U32 = 2**32 - 1
_FMTP_INT_RANGES = {  # aiortc parses these as int and copies some into its answer
    "apt": (0, 127),
    "max-fr": (0, _U32),
    "max-fs": (0, _U32),
    "maxplaybackrate": (0, _U32),
    "minptime": (0, 1000),
    "stereo": (0, 1),
    "useinbandfec": (0, 1),
}
_CANDIDATE_TYPES = frozenset({"host", "srflx", "prflx", "relay"})
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def _check_ice(media: aiortc_sdp.MediaDescription, kind: str) -> None:
    ice = media.ice
    if ice is None or not ice.usernameFragment or not ice.password:
        raise BadSdp(f"{kind} section lacks ice-ufrag/ice-pwd")
    if not _ICE_UFRAG.fullmatch(ice.usernameFragment):
        raise BadSdp(f"{kind} section's ice-ufrag is not 4-256 ice-chars (RFC 8839)")
    if not _ICE_PWD.fullmatch(ice.password):
        raise BadSdp(f"{kind} section's ice-pwd is not 22-256 ice-chars (RFC 8839)")
    for cand in media.ice_candidates:
        check_candidate(cand)


def _check_dtls(media: aiortc_sdp.MediaDescription, kind: str) -> None:
    if media.dtls is None or not media.dtls.fingerprints:
        raise BadSdp(f"{kind} section lacks a DTLS fingerprint or setup attribute")
    for fp in media.dtls.fingerprints:
        size = _FINGERPRINT_BYTES.get(fp.algorithm.lower())
        if size is None:
            raise BadSdp(f"fingerprint hash {fp.algorithm[:16]!r} is not one of RFC 8122's")
        pairs = fp.value.split(":")
        if len(pairs) != size or not all(_HEX_PAIR.fullmatch(p) for p in pairs):
            raise BadSdp(f"{fp.algorithm} fingerprint is not {size} hex bytes")


def _check_rtp(media: aiortc_sdp.MediaDescription, kind: str) -> None:
    """Payload types, codecs, header extensions and SSRCs: the numbers aiortc copies into its
    answer or its RTP/RTCP headers."""
    for pt in media.fmt:
        _check_payload_type(pt, kind)
    seen: set[int] = set()
    for codec in media.rtp.codecs:
        pt = codec.payloadType
        assert pt is not None  # the parser sets it from the a=rtpmap line
        _check_payload_type(pt, kind)
        if pt in seen:
            raise BadSdp(f"{kind} payload type {pt} is mapped twice")
        seen.add(pt)
        if not _CODEC_NAME.fullmatch(codec.name):
            raise BadSdp(f"{kind} payload type {codec.payloadType} has no valid codec name")
        if not 0 < codec.clockRate <= _U32:
            raise BadSdp(
                f"{kind} payload type {codec.payloadType} has clock rate {codec.clockRate}"
            )
        if codec.channels is not None and not 0 < codec.channels <= 255:
            raise BadSdp(f"{kind} payload type {codec.payloadType} has {codec.channels} channels")
        for key, value in codec.parameters.items():
            bounds = _FMTP_INT_RANGES.get(key)
            if bounds is not None and not (
                isinstance(value, int) and bounds[0] <= value <= bounds[1]
            ):
                raise BadSdp(f"{kind} payload type {codec.payloadType}: {key} out of range")
    ids: set[int] = set()
    for ext in media.rtp.headerExtensions:
        if not 1 <= ext.id <= 255 or ext.id == 15:  # RFC 8285: 15 is reserved
            raise BadSdp(f"{kind} header extension id {ext.id} is out of range")
        if ext.id in ids:
            raise BadSdp(f"{kind} header extension id {ext.id} is mapped twice")
        ids.add(ext.id)
    for ssrc in media.ssrc:
        if not 0 <= ssrc.ssrc <= _U32:
            raise BadSdp(f"{kind} SSRC {ssrc.ssrc} is not a 32-bit number")
    for group in media.ssrc_group:
        if not all(isinstance(x, int) and 0 <= x <= _U32 for x in group.items):
            raise BadSdp(f"{kind} ssrc-group holds a number that is not a 32-bit SSRC")
    if media.rtcp_port is not None and not 0 <= media.rtcp_port <= 65535:
        raise BadSdp(f"{kind} a=rtcp port {media.rtcp_port} is out of range")


def _check_payload_type(pt: int, kind: str) -> None:
    # 7 bits in the RTP header; 64-95 collide with RTCP packet types under rtcp-mux (RFC 5761)
    if not 0 <= pt <= 127 or 64 <= pt <= 95:
        raise BadSdp(f"{kind} payload type {pt} is outside 0-63 and 96-127")


def _usable_codecs(media: aiortc_sdp.MediaDescription) -> tuple[str, ...]:
    """Names of the offered codecs that we forward and aiortc can negotiate as offered (name,
    clock rate, channels, H264 mode and profile), in the offer's order, each once."""
    names: list[str] = []
    wanted = {n.lower() for n in SUPPORTED_CODECS[cast(MediaKind, media.kind)]}
    for codec in media.rtp.codecs:
        try:  # aiortc compares every offered codec so, inside setRemoteDescription
            compatible = any(is_codec_compatible(local, codec) for local in CODECS[media.kind])
        except (TypeError, ValueError) as exc:  # e.g. a packetization-mode without a value
            raise BadSdp(f"{media.kind} payload type {codec.payloadType}: bad fmtp") from exc
        if not compatible or codec.name.lower() not in wanted or codec.name in names:
            continue
        if media.kind == "audio" and codec.channels != 2:
            continue  # aiortc's Opus is stereo (RFC 7587: always opus/48000/2)
        names.append(codec.name)
    return tuple(names)


def _check_bundle(desc: aiortc_sdp.SessionDescription, mids: list[str]) -> None:
    """RFC 9725 (WHIP) section 4.5: one BUNDLE group holding every m-section. aiortc takes
    the group's first mid as the transport of all; a mid it does not know leaves the sections
    without one."""
    bundles = [g for g in desc.group if g.semantic == "BUNDLE"]
    if not bundles:
        return
    if len(bundles) > 1:
        raise Unprocessable("more than one BUNDLE group")
    items = [str(item) for item in bundles[0].items]
    if len(set(items)) != len(items) or not set(items) <= set(mids):
        raise BadSdp("the BUNDLE group names a mid twice or one no section has")
    if set(items) != set(mids):
        raise Unprocessable("every m-section must be in the BUNDLE group")
    ices = {(m.ice.usernameFragment, m.ice.password) for m in desc.media if m.ice is not None}
    if len(ices) > 1:
        raise BadSdp("the sections of the BUNDLE group carry different ICE credentials")


def check_candidate(cand: RTCIceCandidate) -> None:
    """An ICE candidate's fields in their RFC 8839 ranges (aiortc parses the numbers and
    nothing more); raises BadSdp."""
    if not 1 <= cand.component <= 256:
        raise BadSdp(f"candidate component {cand.component} is out of range")
    if not 0 <= cand.port <= 65535 or not 0 <= cand.priority <= _U32:
        raise BadSdp("candidate port or priority is out of range")
    if cand.protocol.lower() not in ("udp", "tcp"):
        raise BadSdp(f"candidate transport {cand.protocol[:16]!r} is neither UDP nor TCP")
    if cand.type not in _CANDIDATE_TYPES:
        raise BadSdp(f"candidate type {cand.type[:16]!r} is not host, srflx, prflx or relay")
    for address in (cand.ip, cand.relatedAddress):
        if address is not None and not _is_address(address):
            raise BadSdp("candidate address is neither an IP address nor a host name")
    if cand.relatedPort is not None and not 0 <= cand.relatedPort <= 65535:
        raise BadSdp("candidate rport is out of range")
    if cand.tcpType is not None and cand.tcpType not in ("active", "passive", "so"):
        raise BadSdp("candidate tcptype is not active, passive or so")
    if len(cand.foundation) > 32 or not _ICE_CHARS.fullmatch(cand.foundation):
        raise BadSdp("candidate foundation is not 1-32 ice-chars")


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(text))
    return True


def strip_mdns_candidates(text: str) -> str:
    """Drop host candidates hidden behind mDNS names (``*.local``, RFC 8445 / Chrome's default).

    aiortc would try to resolve them inside setRemoteDescription (about a second, and they do not
    resolve across hosts anyway); the connection works without them: the answer carries our
    addresses, and the browser's checks reveal its own as peer-reflexive candidates."""
    kept = []
    for line in text.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) > 4 and fields[4].lower().endswith(".local"):
                continue
        kept.append(line)
    return "".join(kept)


_VIDEO_CODECS = frozenset({"h264", "vp8", "vp9", "av1"})


def with_format_params(answer: str, kind: str, codecs: frozenset[str], params: str) -> str:
    """An SDP answer whose ``kind`` m-sections give every codec named in ``codecs`` (lower
    case) the format parameters ``params`` (``name=value;...``), added to its ``a=fmtp`` line
    or as a new one; a codec that has the first parameter already is left as it is."""
    lines = answer.splitlines(keepends=True)
    out: list[str] = []
    section = False
    pts: set[str] = set()
    with_fmtp: set[str] = set()
    for line in lines:  # first pass: which payload types are those codecs, which have fmtp
        if line.startswith("m="):
            section = line.startswith(f"m={kind}")
        elif section and line.startswith("a=rtpmap:"):
            pt, _, rest = line[len("a=rtpmap:") :].partition(" ")
            if rest.split("/")[0].strip().lower() in codecs:
                pts.add(pt)
        elif section and line.startswith("a=fmtp:"):
            with_fmtp.add(line[len("a=fmtp:") :].partition(" ")[0])
    first = params.split("=", 1)[0]
    section = False
    for line in lines:
        if line.startswith("m="):
            section = line.startswith(f"m={kind}")
        body = line.rstrip("\r\n")
        end = line[len(body) :] or "\r\n"
        if section and line.startswith("a=fmtp:"):
            pt, _, have = body[len("a=fmtp:") :].partition(" ")
            if pt in pts and f"{first}=" not in have:
                line = f"a=fmtp:{pt} {have};{params}{end}" if have else f"a=fmtp:{pt} {params}{end}"
        out.append(line)
        if section and line.startswith("a=rtpmap:"):
            pt = body[len("a=rtpmap:") :].partition(" ")[0]
            if pt in pts and pt not in with_fmtp:
                out.append(f"a=fmtp:{pt} {params}{end}")
    return "".join(out)


def with_start_bitrate(answer: str, kbps: int) -> str:
    """An SDP answer whose video codecs carry libwebrtc's ``x-google-start-bitrate`` format
    parameter (kbps).

    A browser sending to us without transport-cc (relay/rtc/transport_cc.py) has only REMB for
    bandwidth estimation, and from its default 300 kbps start it ramps a 720p camera up over
    tens of seconds, sending 360p meanwhile. Told where to start, it begins near the rate the
    stream needs. Other clients ignore the parameter (RFC 8866: unknown format parameters are
    ignored); the WHIP endpoint adds it for offers with transport-cc only (``OfferSummary``),
    so the answers other clients get stay as they were. An answer's own value is replaced."""
    if kbps <= 0:
        return answer
    name = "x-google-start-bitrate"
    lines = answer.splitlines(keepends=True)
    if any(line.startswith("a=fmtp:") and f"{name}=" in line for line in lines):
        answer = "".join(_without_param(line, name) for line in lines)
    return with_format_params(answer, "video", _VIDEO_CODECS, f"{name}={int(kbps)}")


def _without_param(line: str, name: str) -> str:
    """An ``a=fmtp`` line without the parameter ``name`` (the line itself if it has none)."""
    if not line.startswith("a=fmtp:"):
        return line
    body = line.rstrip("\r\n")
    end = line[len(body) :]
    pt, _, params = body[len("a=fmtp:") :].partition(" ")
    kept = [p for p in params.split(";") if p.strip() and p.split("=", 1)[0].strip() != name]
    return f"a=fmtp:{pt} {';'.join(kept)}{end}" if kept else ""


def with_opus_dtx(answer: str) -> str:
    """An SDP answer that asks the anchor's Opus encoder for discontinuous transmission
    (``usedtx=1``, RFC 7587): while the anchor is silent it sends a comfort-noise packet every
    400 ms instead of one every 20 ms, and every viewer is sent that many fewer packets. The
    decoders (browsers', aiortc's, the mixer's and the bridge's) take the gaps as silence."""
    return with_format_params(answer, "audio", frozenset({"opus"}), "usedtx=1")


def pick_codec(offered: tuple[str, ...], preference: tuple[str, ...]) -> str:
    """First codec of ``preference`` that the offer lists (case-insensitive)."""
    lowered = {n.lower() for n in offered}
    for name in preference:
        if name.lower() in lowered:
            return name
    raise Unprocessable(f"none of {', '.join(preference)} is offered")


@dataclass(frozen=True, slots=True)
class TrickleFragment:
    ufrag: str | None
    pwd: str | None
    candidates: tuple[tuple[str | None, str], ...]  # (mid, candidate attribute value)
    end_of_candidates: bool


def parse_trickle(text: str) -> TrickleFragment:
    """Parse an ``application/trickle-ice-sdpfrag`` body (RFC 8840), vetting each value as
    check_offer does; raises BadSdp."""
    ufrag = pwd = mid = None
    cands: list[tuple[str | None, str]] = []
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith(("a=", "m=")) or not _LINE.fullmatch(line):
            raise BadSdp(f"unexpected line in SDP fragment: {line[:40]!r}")
        if line.startswith("a=ice-ufrag:"):
            ufrag = line.split(":", 1)[1]
            if not _ICE_UFRAG.fullmatch(ufrag):
                raise BadSdp("ice-ufrag is not 4-256 ice-chars (RFC 8839)")
        elif line.startswith("a=ice-pwd:"):
            pwd = line.split(":", 1)[1]
            if not _ICE_CHARS.fullmatch(pwd):
                raise BadSdp("ice-pwd is not 1-256 ice-chars (RFC 8839)")
        elif line.startswith("a=mid:"):
            mid = line.split(":", 1)[1]
            if not _MID.fullmatch(mid):
                raise BadSdp("mid is not 1-16 token characters")
        elif line.startswith("a=candidate:"):
            value = line[len("a=candidate:") :]
            check_candidate(parse_candidate(value))
            cands.append((mid, value))
        elif line == "a=end-of-candidates":
            end = True
    return TrickleFragment(ufrag, pwd, tuple(cands), end)


def parse_candidate(value: str) -> RTCIceCandidate:
    """An ``a=candidate`` value (without the ``a=candidate:``) as aiortc reads it; BadSdp if
    it has too few fields or a number that is not one."""
    if len(value) > 512 or len(value.split()) < 8:
        raise BadSdp("malformed candidate line")
    try:
        return candidate_from_sdp(value)
    except (ValueError, IndexError, AssertionError) as exc:
        raise BadSdp(f"candidate could not be parsed: {type(exc).__name__}") from exc
