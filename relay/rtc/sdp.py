"""Checks an SDP offer before any peer connection exists, so bad input costs nothing to refuse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from aiortc import sdp as aiortc_sdp

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


@dataclass(frozen=True, slots=True)
class OfferSummary:
    """What an offer asks for: per kind, the codec names it lists (in its order)."""

    codecs: dict[MediaKind, tuple[str, ...]]
    ice_ufrag: str
    ice_pwd: str

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
    """Parse and vet an offer; raises BadSdp (400) or Unprocessable (422)."""
    if not text.startswith("v=0"):
        raise BadSdp("SDP must start with v=0")
    try:
        desc = aiortc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises whatever the bad line triggers
        raise BadSdp(f"SDP could not be parsed: {type(exc).__name__}") from exc
    if not desc.media:
        raise BadSdp("SDP has no media section")
    codecs: dict[MediaKind, tuple[str, ...]] = {}
    ufrag = pwd = None
    for media in desc.media:
        if media.kind not in ("audio", "video"):
            raise Unprocessable(f"media kind {media.kind!r} is not supported")
        kind = cast(MediaKind, media.kind)
        if kind in codecs:
            raise Unprocessable(f"only one {kind} section is supported")
        if media.direction not in _DIRECTIONS[role]:
            want = " or ".join(sorted(_DIRECTIONS[role]))
            raise Unprocessable(f"{kind} section is {media.direction}; expected {want}")
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise BadSdp(f"{kind} section lacks ice-ufrag/ice-pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise BadSdp(f"{kind} section lacks a DTLS fingerprint or setup attribute")
        if not media.rtp.muxId:
            raise BadSdp(f"{kind} section lacks a mid")
        ufrag, pwd = media.ice.usernameFragment, media.ice.password
        names = tuple(c.name for c in media.rtp.codecs)
        if not any(n.lower() == s.lower() for n in names for s in SUPPORTED_CODECS[kind]):
            want = ", ".join(SUPPORTED_CODECS[kind])
            raise Unprocessable(f"{kind} offers none of the supported codecs ({want})")
        codecs[kind] = names
    assert ufrag is not None and pwd is not None
    return OfferSummary(codecs=codecs, ice_ufrag=ufrag, ice_pwd=pwd)


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

    A browser sending to us has only REMB for bandwidth estimation (aiortc has no transport-cc),
    and from its default 300 kbps start it ramps a 720p camera up over tens of seconds, sending
    360p meanwhile. Told where to start, it begins near the rate the stream needs. Other clients
    ignore the parameter (RFC 8866: unknown format parameters are ignored)."""
    if kbps <= 0:
        return answer
    return with_format_params(answer, "video", _VIDEO_CODECS, f"x-google-start-bitrate={kbps}")


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
    """Parse an ``application/trickle-ice-sdpfrag`` body (RFC 8840)."""
    ufrag = pwd = mid = None
    cands: list[tuple[str | None, str]] = []
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("a=") and not line.startswith("m="):
            raise BadSdp(f"unexpected line in SDP fragment: {line[:40]!r}")
        if line.startswith("a=ice-ufrag:"):
            ufrag = line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            pwd = line.split(":", 1)[1]
        elif line.startswith("a=mid:"):
            mid = line.split(":", 1)[1]
        elif line.startswith("a=candidate:"):
            value = line[len("a=candidate:") :]
            if len(value.split()) < 8:
                raise BadSdp("malformed candidate line")
            cands.append((mid, value))
        elif line == "a=end-of-candidates":
            end = True
    return TrickleFragment(ufrag, pwd, tuple(cands), end)
