"""The stream key (sans-I/O): one name per stream, its query form encoded and decoded in one
place, the same id wherever a stream is named."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.media.stream_key import StreamKey

values = st.none() | st.text(max_size=20)


@given(
    room=st.text(alphabet="abcXYZ019_.-", min_size=1, max_size=64),
    rendition=values,
    anchor=values,
    mixminus=values,
)
def test_query_round_trip(
    room: str, rendition: str | None, anchor: str | None, mixminus: str | None
) -> None:
    """Any key survives its own query string (odd characters, empty values and all)."""
    key = StreamKey(room, rendition, anchor, mixminus)
    assert StreamKey.from_query(room, key.query()) == key
    assert StreamKey.from_query(room, dict(key_params(key))) == key


def key_params(key: StreamKey) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name in ("rendition", "anchor", "mixminus")
        if (value := getattr(key, name)) is not None
    ]


def test_ids_and_paths() -> None:
    assert StreamKey("r").id == "r" == str(StreamKey("r"))
    assert StreamKey("r").path() == "/whep/r"
    assert StreamKey("r", rendition="360p").id == "r?rendition=360p"
    assert StreamKey("r", anchor="a b&c").path("/x") == "/x/r?anchor=a+b%26c"
    assert StreamKey("r", mixminus="m").id == "r?mixminus=m"
    # a fixed order, whatever order the request gave
    both = StreamKey.from_query("r", "anchor=a&rendition=low")
    assert both.query() == "rendition=low&anchor=a"


def test_other_parameters_are_not_part_of_the_key() -> None:
    key = StreamKey.from_query("r", "access_token=t&rendition=low&x=1")
    assert key == StreamKey("r", rendition="low")
    assert StreamKey.from_query("r", "") == StreamKey("r")


def test_an_empty_value_is_kept_not_dropped() -> None:
    """``?rendition=`` names no rendition: the lookup refuses it (404) rather than the key
    quietly becoming the program."""
    key = StreamKey.from_query("r", "rendition=")
    assert key.rendition == "" and key != StreamKey("r")
    assert key.query() == "rendition="


def test_frozen_and_hashable() -> None:
    """Pulls and pending pulls are keyed by it."""
    key = StreamKey("r", rendition="low")
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.room = "s"  # type: ignore[misc]
    pulls = {key: 1, StreamKey("r"): 2}
    assert pulls[StreamKey("r", "low")] == 1 and len(pulls) == 2


def test_the_origins_hub_lookup_takes_the_key_and_the_subject_apart() -> None:
    from gateway.stage.selection import hub_selector
    from relay.errors import Forbidden, NotFound
    from relay.media.frames import CodecSpec
    from relay.media.hub import FanoutHub

    codecs = {"audio": CodecSpec("audio", "opus", 48000)}
    hubs = {k: FanoutHub(k, codecs) for k in (StreamKey("r"), StreamKey("r", "low"))}
    own = FanoutHub(StreamKey("r", anchor="a"), codecs)
    mix = FanoutHub(StreamKey("r", mixminus="a"), codecs)
    asked: list[str | None] = []

    def mixminus(room: str, anchor: str, subject: str | None) -> FanoutHub | None:
        asked.append(subject)
        if subject not in (None, "alice"):
            raise Forbidden("not yours")
        return mix if (room, anchor) == ("r", "a") else None

    select = hub_selector(
        lambda room: hubs.get(StreamKey(room)),
        lambda room, name: hubs.get(StreamKey(room, name)),
        lambda room, anchor, layer: own if (room, anchor, layer) == ("r", "a", None) else None,
        ["main", "low"],
        mixminus=mixminus,
    )
    assert select(StreamKey("r"), None) is hubs[StreamKey("r")]
    assert select(StreamKey("r", "low"), "v") is hubs[StreamKey("r", "low")]
    assert select(StreamKey("r", anchor="a"), None) is own
    assert select(StreamKey("r", mixminus="a"), "alice") is mix
    assert select(StreamKey("r", mixminus="a"), None) is mix  # a liveness probe (HEAD)
    assert asked == ["alice", None]
    with pytest.raises(Forbidden):
        select(StreamKey("r", mixminus="a"), "mallory")
    for missing in (StreamKey("r", ""), StreamKey("r", anchor="b"), StreamKey("r", mixminus="b")):
        with pytest.raises(NotFound):
            select(missing, None)
    assert select(StreamKey("other"), None) is None  # not live: the service answers 409
