"""What check_offer / parse_trickle / token verification refuse before aiortc or a handler sees
it (sans-I/O). Every offer here got past the old checks and made aiortc raise inside a
request (a 500 that dropped the connection); the live counterparts are in
tests/live/test_bad_offers.py."""

from __future__ import annotations

import json
import re
import time

import pytest

from relay.auth.tokens import TokenAuthority
from relay.errors import BadSdp, Forbidden, Unauthorized, Unprocessable
from relay.rtc.sdp import Role, check_offer, parse_trickle
from tests.support.offers import BAD, REAL, fixture, signed

SECRET = "offer-checks-" + "s" * 40


@pytest.mark.parametrize(("name", "role"), REAL)
def test_real_offers_pass(name: str, role: Role) -> None:
    summary = check_offer(fixture(name), role)
    assert set(summary.kinds) == {"audio", "video"}
    assert "opus" in summary.codecs["audio"]
    assert {"VP8", "H264"} & set(summary.codecs["video"])


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize(("name", "role"), REAL)
def test_bad_offers_refused(case: str, name: str, role: Role) -> None:
    edit, error = BAD[case]
    text = fixture(name)
    bad = edit(text)
    if bad == text:
        pytest.skip(f"{name} has nothing {case!r} changes")
    with pytest.raises(error):
        check_offer(bad, role)


def test_usable_codecs_only() -> None:
    """A codec aiortc cannot negotiate (wrong clock rate, an H264 mode it lacks) is not
    counted as offered: an offer left with none is refused before a peer connection exists."""
    text = fixture("chromium_whip.sdp")
    summary = check_offer(text, "publish")
    assert summary.codecs["video"] == ("VP8", "H264")
    vp8_off = re.sub(r"^a=rtpmap:96 VP8/90000", "a=rtpmap:96 VP8/48000", text, flags=re.M)
    assert check_offer(vp8_off, "publish").codecs["video"] == ("H264",)
    h264_mode0 = re.sub(r"packetization-mode=1", "packetization-mode=0", vp8_off)
    with pytest.raises(Unprocessable):
        check_offer(h264_mode0, "publish")
    mono = re.sub(r"opus/48000/2", "opus/48000/1", text)
    with pytest.raises(Unprocessable):
        check_offer(mono, "publish")


CAND = "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"


@pytest.mark.parametrize(
    "body",
    [
        "a=ice-ufrag:" + "u" * 300 + "\n" + CAND,
        "a=ice-ufrag:ab\n" + CAND,
        "a=ice-ufrag:ab\xe9cd\n" + CAND,
        "a=ice-pwd:" + "p" * 300 + "\n" + CAND,
        "a=mid:" + "m" * 40 + "\n" + CAND,
        "a=candidate:1 1 udp 2130706431 127.0.0.1 70000 typ host",
        "a=candidate:1 9999 udp 2130706431 127.0.0.1 5000 typ host",
        "a=candidate:1 1 udp 99999999999 127.0.0.1 5000 typ host",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ nonsense",
        "a=candidate:1 1 quic 2130706431 127.0.0.1 5000 typ host",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 x typ host",
        "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ srflx raddr 1.2.3.4 rport x",
        "a=candidate:1 1 udp 2130706431 bad\x00host 5000 typ host",
        "a=candidate:1 1 udp 2130706431 -- 5000 typ host",
    ],
)
def test_trickle_fragments_refused(body: str) -> None:
    with pytest.raises(BadSdp):
        parse_trickle(body)


def test_trickle_fragment_of_a_browser_passes() -> None:
    frag = parse_trickle(
        "a=ice-ufrag:0/GM\r\na=ice-pwd:h0Y4n0R1Rl6YyclcJFp0Z5yD\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0"
        "\r\na=mid:0\r\na=candidate:1175998388 1 tcp 1518214911 127.0.0.1 9 typ host tcptype "
        "active generation 0 network-id 1\r\na=candidate:2 1 udp 1686052607 198.18.0.9 61000 typ "
        "srflx raddr 0.0.0.0 rport 0\r\na=candidate:3 1 udp 2122260223 "
        "0b7c3c9e-1f2d-4a1e-9c3b-7d2a1e5f6a7b.local 54321 typ host\r\na=end-of-candidates\r\n"
    )
    assert frag.ufrag == "0/GM" and len(frag.candidates) == 3 and frag.end_of_candidates


def claims(**fields: object) -> str:
    base: dict[str, object] = {
        "iss": "stagecast",
        "sub": "anchor-1",
        "room": "r",
        "role": "anchor",
        "exp": int(time.time()) + 60,
    }
    base.update(fields)
    return json.dumps(base)


@pytest.mark.parametrize(
    "payload",
    [
        claims(room="\ud800"),
        claims(sub="\ud800"),
        claims(sub="a\x00b"),
        claims(sub="x" * 1000),
        claims(jti="\udfff"),
        claims(room=["r"]),
        claims(room=None),
        claims(role=["anchor"]),
        claims(sub=""),
        claims().replace('"exp": ', '"exp": 1e999, "x": '),
        claims().replace('"exp": ', '"iat": Infinity, "x": '),
        claims().replace('"exp": ', '"nbf": NaN, "x": '),
    ],
    ids=lambda payload: re.sub(r"\d{6,}", "T", payload)[:80],
)
def test_token_claims_of_the_wrong_type_or_text_refused(payload: str) -> None:
    with pytest.raises((Unauthorized, Forbidden)):
        TokenAuthority(SECRET).verify(signed(payload, SECRET), room="r", role="anchor")


def test_token_with_clean_claims_still_passes() -> None:
    got = TokenAuthority(SECRET).verify(
        signed(claims(sub="Zoë 🎤"), SECRET), room="r", role="anchor"
    )
    assert got.subject == "Zoë 🎤" and got.room == "r"


@pytest.mark.parametrize("subject", ["a\nb", "a\x00b", "\ud800", "zero\u200bwidth"])
def test_tokens_are_minted_only_for_subjects_they_can_be_verified_with(subject: str) -> None:
    from pydantic import ValidationError

    from gateway.api_models import TokenRequest

    with pytest.raises(ValidationError):  # the operator API: 422
        TokenRequest(room="r", role="anchor", subject=subject)
    with pytest.raises(ValueError):
        TokenAuthority(SECRET).mint("r", "anchor", subject, 60)


def test_the_operator_api_mints_no_token_with_a_nodes_subject() -> None:
    """A ``node:`` subject marks the cluster's own links, which skip routing, the node's
    overload refusal and room limits: no user token may carry one."""
    from pydantic import ValidationError

    from gateway.api_models import TokenRequest
    from relay.auth.tokens import LINK_SUBJECT_PREFIX

    with pytest.raises(ValidationError):
        TokenRequest(room="r", role="audience", subject=LINK_SUBJECT_PREFIX + "edge-1")
    assert TokenRequest(room="r", role="audience", subject="nodes-fan").subject == "nodes-fan"
