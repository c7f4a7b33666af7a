"""Hostile input: every parser refuses garbage with its own error, never anything else, and the
endpoints answer 4xx problem+json while a live stream keeps flowing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.synthetic import StampedVideoTrack, whep_watch, whip_publish
from relay.auth.tokens import TokenAuthority
from relay.errors import BadSdp, Forbidden, StagecastError, Unauthorized, Unprocessable
from relay.media.bitstream import picture_size
from relay.media.reassembly import FrameAssembler
from relay.rtc.sdp import check_offer, parse_trickle
from tests.server import RunningServer
from tests.test_live_path import wait_for
from tests.test_protocol import SDP, make_offer
from tests.test_units import OFFER

SECRET = "hostile-" + "k" * 40
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sdp_lines = st.sampled_from(OFFER.splitlines()) | st.text(max_size=80).map(lambda s: "a=" + s)


@FAST
@given(st.lists(sdp_lines, max_size=40), st.sampled_from(["publish", "view"]))
def test_check_offer_only_raises_its_own_errors(lines: list[str], role: str) -> None:
    text = "v=0\n" + "\n".join(lines)
    with contextlib.suppress(BadSdp, Unprocessable):
        check_offer(text, role)  # type: ignore[arg-type]


@FAST
@given(st.text(max_size=2000))
def test_check_offer_arbitrary_text(text: str) -> None:
    with contextlib.suppress(BadSdp, Unprocessable):
        check_offer(text, "publish")


@FAST
@given(st.integers(1, 60))
def test_many_m_lines_refused(count: int) -> None:
    head, _, media = OFFER.partition("m=video")
    text = head + ("m=video" + media) * count
    if count == 1:
        check_offer(text, "publish")
    else:
        with pytest.raises(StagecastError):
            check_offer(text, "publish")


@FAST
@given(st.text(max_size=500))
def test_trickle_parser(text: str) -> None:
    with contextlib.suppress(BadSdp):
        parse_trickle(text)


@FAST
@given(st.binary(max_size=300), st.sampled_from(["H264", "VP8", "opus"]))
def test_picture_size_never_crashes(data: bytes, codec: str) -> None:
    size = picture_size(codec, data)
    assert size is None or (isinstance(size[0], int) and isinstance(size[1], int))


@FAST
@given(
    st.lists(
        st.tuples(
            st.integers(0, 65535), st.integers(0, 2**32 - 1), st.booleans(), st.binary(max_size=8)
        ),
        max_size=200,
    )
)
def test_assembler_survives_any_packet_order(packets: list[tuple[int, int, bool, bytes]]) -> None:
    asm = FrameAssembler("video", "H264", max_wait=0.01, max_packets=64)
    now = 0.0
    for seq, ts, marker, data in packets:
        now += 0.005
        result = asm.push(seq, ts, marker, data, data, now)
        for frame in result.frames:
            assert frame.payloads and frame.kind == "video"
        assert len(asm._packets) <= 65  # bounded, whatever arrives


def _b64(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@FAST
@given(st.text(max_size=300))
def test_tokens_garbage(token: str) -> None:
    with pytest.raises((Unauthorized, Forbidden)):
        TokenAuthority(SECRET).verify(token, room="r", role="anchor")


def test_tokens_forged_variants() -> None:
    auth = TokenAuthority(SECRET)
    good = {"iss": "stagecast", "sub": "x", "room": "r", "role": "anchor", "exp": time.time() + 60}
    variants = [
        jwt.encode(good, "wrong-secret-" + "w" * 40, algorithm="HS256"),
        jwt.encode(good, None, algorithm="none"),
        jwt.encode({**good, "exp": time.time() - 60}, SECRET, algorithm="HS256"),
        jwt.encode({**good, "room": "other"}, SECRET, algorithm="HS256"),
        jwt.encode({**good, "role": "audience"}, SECRET, algorithm="HS256"),
        jwt.encode({**good, "role": "operator"}, SECRET, algorithm="HS256"),
        jwt.encode({k: v for k, v in good.items() if k != "exp"}, SECRET, algorithm="HS256"),
        jwt.encode({**good, "iss": "someone"}, SECRET, algorithm="HS256"),
        jwt.encode(good, SECRET, algorithm="HS512"),
        _b64({"alg": "HS256"}) + "." + _b64(good) + ".",
        "a.b.c",
    ]
    for token in variants:
        with pytest.raises((Unauthorized, Forbidden)):
            auth.verify(token, room="r", role="anchor")


@pytest.mark.timeout(120)
async def test_endpoints_refuse_junk_while_a_stream_flows(server: RunningServer) -> None:
    room = "steady"
    pub = await whip_publish(
        server.base_url, room, server.anchor_token(room), video=StampedVideoTrack(320, 180, 30)
    )
    viewer = await whep_watch(server.base_url, room, kinds=("video",), decode=False)
    assert await wait_for(lambda: viewer.video_frames > 10, 10)
    good = await make_offer("sendonly")
    tok = {"Authorization": f"Bearer {server.anchor_token('junk')}"}
    junk: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("POST", "/whip/junk", good[: good.index("m=video") + 40].encode(), {**SDP, **tok}),
        ("POST", "/whip/junk", b"\x00\xff" * 500, {**SDP, **tok}),
        (
            "POST",
            "/whip/junk",
            ("v=0\r\n" + "m=video 9 RTP/AVP 0\r\n" * 500).encode(),
            {**SDP, **tok},
        ),
        (
            "POST",
            "/whip/junk",
            good.replace("H264", "AV1X").replace("VP8", "VP9X").encode(),
            {**SDP, **tok},
        ),
        (
            "POST",
            "/whip/junk",
            good.encode(),
            {"Content-Type": "application/sdpx", **tok},
        ),
        ("POST", "/whip/junk", good.encode(), {**SDP, "Authorization": "Bearer " + "A" * 5000}),
        ("POST", "/whip/junk", good.encode(), {**SDP, "Authorization": "Digest x"}),
        ("POST", "/whip/" + "r" * 300, good.encode(), {**SDP, **tok}),
        ("POST", "/whip/..%2F..%2Fetc", good.encode(), {**SDP, **tok}),
        (
            "PATCH",
            "/whip/junk/x" * 20,
            b"a=candidate:1",
            {"Content-Type": "application/trickle-ice-sdpfrag"},
        ),
        ("POST", "/whep/steady", b"v=0\r\n\x00", SDP),
        ("POST", "/v1/rooms", b"[]" * 1000, {"Content-Type": "application/json"}),
        ("DELETE", "/whep/steady/%00", b"", {}),
    ]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as c:
        for method, path, body, headers in junk:
            resp = await c.request(method, path, content=body, headers=headers)
            assert 400 <= resp.status_code < 500, (path, resp.status_code, resp.text[:200])
            if resp.status_code != 404 or path.startswith(("/whip", "/whep")):
                assert resp.headers["content-type"].startswith("application/problem+json"), path
    before = viewer.video_frames
    await asyncio.sleep(1.0)
    assert viewer.video_frames - before >= 15  # the live stream never noticed
    assert not server.gateway.anchors.sessions.keys() - {
        s.id for s in server.gateway.anchors.in_room(room)
    }
    await viewer.close()
    await pub.close()
