"""Real offers (tests/support/sdp_offers: Chromium 156 and aiortc 1.16 as captured, one after
Firefox 128's shape; addresses rewritten to loopback), the known-bad edits of them that issue 19
found or that belong to the same class, and a token signer with the real secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from pathlib import Path

from relay.errors import BadSdp, StagecastError, Unprocessable
from relay.rtc.sdp import Role

OFFERS = Path(__file__).parent / "sdp_offers"


def fixture(name: str) -> str:
    return (OFFERS / name).read_bytes().decode()


# (file, role): real offers captured from headless Chromium 156 and aiortc 1.16, and one
# written after Firefox 128's shape; addresses rewritten to loopback.
REAL: list[tuple[str, Role]] = [
    ("chromium_whip.sdp", "publish"),
    ("chromium_whep.sdp", "view"),
    ("firefox_whip.sdp", "publish"),
    ("firefox_whep.sdp", "view"),
    ("aiortc_whip.sdp", "publish"),
    ("aiortc_whep.sdp", "view"),
]


def drop_lines(pattern: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        lines = text.splitlines(keepends=True)
        return "".join(line for line in lines if not re.match(pattern, line))

    return edit


def sub(pattern: str, repl: str, count: int = 0) -> Callable[[str], str]:
    return lambda text: re.sub(pattern, repl, text, count=count, flags=re.M)


def first_mid(text: str) -> str:
    m = re.search(r"^a=mid:(\S+)", text, re.M)
    assert m
    return m.group(1)


def dup_mid(text: str) -> str:
    mids = re.findall(r"^a=mid:(\S+)", text, re.M)
    return text.replace(f"a=mid:{mids[1]}", f"a=mid:{mids[0]}")


# The kinds issue 19 saw (each a 500 on WHEP, most on WHIP too), then the rest of the class.
BAD: dict[str, tuple[Callable[[str], str], type[StagecastError]]] = {
    "no rtcp-mux": (drop_lines(r"a=rtcp-mux\r?$"), Unprocessable),
    # parses, but aiortc cannot write it back out (pc.remoteDescription, mid-answer)
    "connection address not an address": (sub(r"^c=IN IP4 \S+", "c=IN IP4 a"), BadSdp),
    "mid not in BUNDLE": (lambda t: t.replace(f"a=mid:{first_mid(t)}", "a=mid:zz"), BadSdp),
    "long mid": (lambda t: t.replace(f"a=mid:{first_mid(t)}", "a=mid:" + "m" * 5000), BadSdp),
    "duplicate mid": (dup_mid, BadSdp),
    "clock rate 0": (sub(r"^(a=rtpmap:\d+ [^/\r\n]+)/\d+", r"\1/0"), BadSdp),
    "BUNDLE names a missing mid": (
        sub(r"^a=group:BUNDLE ([^\r\n]*)", r"a=group:BUNDLE \1 9"),
        BadSdp,
    ),
    "mid left out of BUNDLE": (
        sub(r"^a=group:BUNDLE (\S+)[^\r\n]*", r"a=group:BUNDLE \1"),
        Unprocessable,
    ),
    "two BUNDLE groups": (sub(r"^(a=group:BUNDLE [^\r\n]*)", r"\1\r\n\1", 1), Unprocessable),
    "mid with a space-free odd char": (
        lambda t: t.replace(f"a=mid:{first_mid(t)}", "a=mid:\x7f"),
        BadSdp,
    ),
    "payload type 200": (sub(r"^a=rtpmap:\d+ ", "a=rtpmap:200 ", 1), BadSdp),
    "payload type in the RTCP range": (sub(r"^a=rtpmap:\d+ ", "a=rtpmap:72 ", 1), BadSdp),
    "duplicate payload type": (sub(r"^a=rtpmap:\d+ ", "a=rtpmap:0 ", 0), BadSdp),
    "negative clock rate": (sub(r"^(a=rtpmap:\d+ [^/\r\n]+)/\d+", r"\1/-90000"), BadSdp),
    "zero channels": (sub(r"^a=rtpmap:(\d+) opus/48000/2", r"a=rtpmap:\1 opus/48000/0"), BadSdp),
    "short ice-ufrag": (sub(r"^a=ice-ufrag:[^\r\n]*", "a=ice-ufrag:ab"), BadSdp),
    "ice-pwd with odd chars": (sub(r"^a=ice-pwd:[^\r\n]*", "a=ice-pwd:" + "é" * 24), BadSdp),
    "long ice-pwd": (sub(r"^a=ice-pwd:[^\r\n]*", "a=ice-pwd:" + "p" * 300), BadSdp),
    "no ice-pwd": (drop_lines(r"a=ice-pwd:"), BadSdp),
    "unknown fingerprint hash": (sub(r"^a=fingerprint:\S+", "a=fingerprint:md5"), BadSdp),
    "fingerprint of the wrong length": (sub(r"^(a=fingerprint:sha-256 )\S+", r"\1AB:CD"), BadSdp),
    "no fingerprint": (drop_lines(r"a=fingerprint:"), BadSdp),
    "no setup": (drop_lines(r"a=setup:"), BadSdp),
    "no direction": (drop_lines(r"a=(sendonly|recvonly|sendrecv)\r?$"), Unprocessable),
    "inactive": (sub(r"^a=(sendonly|recvonly)(?=\r?$)", "a=inactive"), Unprocessable),
    "header extension id 0": (sub(r"^a=extmap:\d+", "a=extmap:0", 1), BadSdp),
    "header extension id 300": (sub(r"^a=extmap:\d+", "a=extmap:300", 1), BadSdp),
    "ssrc beyond 32 bits": (sub(r"^a=ssrc:\d+", "a=ssrc:99999999999", 1), BadSdp),
    "candidate port beyond 65535": (
        sub(r"^(a=candidate:\S+ \d \S+ \d+ \S+) \d+", r"\1 70000", 1),
        BadSdp,
    ),
    "candidate component 0": (sub(r"^(a=candidate:\S+) \d ", r"\1 0 ", 1), BadSdp),
    "candidate of an unknown type": (sub(r" typ host", " typ bogus", 1), BadSdp),
    "candidate on an unknown transport": (sub(r"^(a=candidate:\S+ \d) \S+", r"\1 sctp", 1), BadSdp),
    "apt beyond 127": (sub(r"apt=\d+", "apt=4000", 1), BadSdp),
    "NUL in a line": (sub(r"^s=[^\r\n]*", "s=\x00"), BadSdp),
    "line without a type": (sub(r"^s=[^\r\n]*", "s=-\r\nnonsense"), BadSdp),
    "RTP without DTLS": (sub(r"UDP/TLS/RTP/SAVPF", "RTP/AVP"), Unprocessable),
}


def signed(payload: str, secret: str) -> str:
    """A token signed with the real secret whose claims are whatever JSON ``payload`` holds."""

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(payload.encode("utf-8", "surrogatepass"))
    sig = b64(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()
