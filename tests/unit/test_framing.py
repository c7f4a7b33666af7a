"""RFC 4571 framing (relay/media/framing.py): frames cut anywhere in the stream come out whole,
and a length above the decoder's bound is refused before its bytes arrive."""

from __future__ import annotations

import random

import pytest

from relay.media.framing import MAX_FRAME, FrameDecoder, FramingError, encode_frame


def test_frames_survive_any_cut_of_the_stream() -> None:
    rng = random.Random(4571)
    datagrams = [rng.randbytes(rng.randrange(0, 1500)) for _ in range(200)] + [
        b"",
        b"x" * MAX_FRAME,
    ]
    stream = b"".join(encode_frame(d) for d in datagrams)
    for _ in range(5):
        decoder = FrameDecoder()
        out: list[bytes] = []
        at = 0
        while at < len(stream):
            step = rng.choice([1, 2, 3, rng.randrange(1, 4000)])
            out += decoder.feed(stream[at : at + step])
            at += step
        assert out == datagrams
        assert decoder.pending == 0


def test_a_partial_frame_is_held_and_nothing_more() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00") == []
    assert decoder.feed(b"\x05abc") == []
    assert decoder.pending == 5
    assert decoder.feed(b"de\x00\x01z\x00") == [b"abcde", b"z"]
    assert decoder.pending == 1


def test_a_length_above_the_bound_is_refused_at_once() -> None:
    decoder = FrameDecoder(max_frame=1500)
    assert decoder.feed(encode_frame(b"s" * 1500)) == [b"s" * 1500]
    with pytest.raises(FramingError):
        decoder.feed(b"\x05\xdd")  # 1501: refused on the header alone
    assert decoder.pending == 0
    with pytest.raises(FramingError):
        FrameDecoder(max_frame=100).feed(encode_frame(b"ok") + b"\xff\xff")


def test_a_datagram_too_long_for_a_frame_is_not_encoded() -> None:
    assert encode_frame(b"") == b"\x00\x00"
    assert encode_frame(bytearray(b"ab")) == b"\x00\x02ab"
    with pytest.raises(FramingError):
        encode_frame(b"x" * (MAX_FRAME + 1))
