"""Hostile input: every parser refuses garbage with its own error, never anything else."""

from __future__ import annotations

import base64
import contextlib
import json
import time

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.auth.tokens import TokenAuthority
from relay.errors import BadSdp, Forbidden, StagecastError, Unauthorized, Unprocessable
from relay.media.bitstream import picture_size
from relay.media.reassembly import FrameAssembler
from relay.rtc.sdp import check_offer, parse_trickle
from tests.unit.test_units import OFFER

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
        assert asm.pending <= 65  # bounded, whatever arrives


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


@pytest.mark.parametrize("room", [".", "..", ".hidden", "a" * 65, "", "a/b", "a b"])
def test_room_names_that_could_name_a_directory_outside_are_refused(room: str) -> None:
    """A room name becomes a directory (HLS, recordings): "." and ".." named the directory itself
    or its parent, which the HLS bridge then emptied (rmtree)."""
    from pydantic import ValidationError

    from gateway.api_models import RoomCreate
    from relay.http.common import check_room

    with pytest.raises(Unprocessable):
        check_room(room)
    with pytest.raises(ValidationError):
        RoomCreate(name=room)


@pytest.mark.parametrize("room", ["a", "a.b", "a..b", "_x", "-y", "Z" * 64])
def test_ordinary_room_names_pass(room: str) -> None:
    from gateway.api_models import RoomCreate
    from relay.http.common import check_room

    check_room(room)
    assert RoomCreate(name=room).name == room
