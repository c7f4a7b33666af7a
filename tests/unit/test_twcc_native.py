"""relay/media/_twcc.c against its Python reference: the same parse, and an estimator taking
feedback in C ends in exactly the state of one taking it in Python (same inputs, random and
malformed ones included)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from relay.media.cc_feedback import (
    FeedbackError,
    build_transport_feedback,
    parse_transport_feedback,
)
from relay.media.estimator import BandwidthEstimator
from tests.support.link_trace import Link, run_adaptive, run_trace

_twcc = pytest.importorskip("relay.media._twcc")


def fci(packet: bytes) -> bytes:
    return packet[12:]


def parsed(body: bytes) -> Any:
    try:
        f = parse_transport_feedback(body)
    except FeedbackError as exc:
        return ("error", str(exc))
    return (f.base_sequence, f.feedback_count, f.arrivals)


def parsed_native(body: bytes) -> Any:
    try:
        return _twcc.parse(body)
    except ValueError as exc:
        return ("error", str(exc))


def state(est: BandwidthEstimator, now: float) -> tuple[Any, ...]:
    """Everything: the snapshot, the send history and every field of the transport-cc state
    (``inner``: the trendline's points and sums, the windows, the targets, the counters)."""
    return (
        est.snapshot(now),
        list(est._acked),
        list(est._seq),
        list(est._time),
        list(est._size),
        est.next_sequence,
        est._cc.inner(now),
    )


def random_bodies(rng: random.Random, count: int) -> list[bytes]:
    good = fci(build_transport_feedback(65530, [0.1, None, 0.3, 9.0, -1.0, 0.1004] * 20))
    bodies = []
    whole = fci(build_transport_feedback(0, [0.1, None, 0.3, 0.2] * 10))
    for _ in range(count):
        if rng.random() < 0.3:
            bodies.append(whole if rng.random() < 0.5 else good)
            continue
        if rng.random() < 0.3:
            bodies.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64))))
            continue
        body = bytearray(good)
        for _ in range(rng.randrange(0, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        bodies.append(bytes(body[: rng.randrange(len(body) + 1)]))
    return bodies


def test_the_c_parse_matches_the_python_one_on_random_and_mutated_input() -> None:
    rng = random.Random(5)
    for body in random_bodies(rng, 4000):
        assert parsed_native(body) == parsed(body)
    for _ in range(300):  # valid feedback of every shape: deltas small, large, negative, lost
        n = rng.randrange(1, 300)
        arrivals = [
            None if rng.random() < 0.2 else rng.uniform(-5.0, 5.0) + i * 0.001 for i in range(n)
        ]
        body = fci(build_transport_feedback(rng.randrange(65536), arrivals))
        assert parsed_native(body) == parsed(body)


def test_an_estimator_in_c_ends_where_the_python_one_does_on_link_traces() -> None:
    for link in (Link(capacity_bps=1e6), Link(loss=0.05), Link(dip=(3.0, 6.0, 4e5))):
        native, python = BandwidthEstimator(), BandwidthEstimator(native=False)
        assert native.native and not python.native
        a = run_trace(native, link, stream_bps=1.5e6, seconds=10)
        b = run_trace(python, link, stream_bps=1.5e6, seconds=10)
        assert a == b
        assert native.feedbacks == python.feedbacks > 100
        assert state(native, 10.0) == state(python, 10.0)


def test_an_estimator_in_c_counts_garbage_as_the_python_one_does() -> None:
    rng = random.Random(9)
    native, python = BandwidthEstimator(), BandwidthEstimator(native=False)
    now = 0.0
    for i, body in enumerate(random_bodies(rng, 3000)):
        now += 0.025  # within the feedback rate
        if i % 40 == 0:  # packets sent meanwhile, some reported twice or long ago
            sizes = [rng.choice((120, 1200, 299, 300)) for _ in range(rng.randrange(1, 80))]
            native.record(sizes, now)
            python.record(sizes, now)
        if i % 500 == 0:
            now += 6.0  # past the history's age
        native.on_transport_feedback(body, now)
        python.on_transport_feedback(body, now)
        assert (native.malformed, native.unknown, native.feedbacks) == (
            python.malformed,
            python.unknown,
            python.feedbacks,
        )
    assert native.malformed > 100 and native.feedbacks > 100
    assert state(native, now) == state(python, now)


def test_record_in_c_numbers_and_remembers_as_python_does() -> None:
    rng = random.Random(2)
    native, python = BandwidthEstimator(), BandwidthEstimator(native=False)
    now = 0.0
    for _ in range(1000):  # past the 16-bit wrap and many times round the history
        sizes = tuple(rng.randrange(0, 1500) for _ in range(rng.randrange(0, 300)))
        now += rng.random()
        assert native.record(sizes, now) == python.record(list(sizes), now)
    assert state(native, now) == state(python, now)
    with pytest.raises(TypeError):
        native.record(("1200",), now)  # type: ignore[arg-type]


def test_the_c_states_constants_are_the_estimators() -> None:
    from relay.media import estimator as e

    t = e._Trendline
    python = {
        "HISTORY_AGE": e.HISTORY_AGE,
        "DELAY_MIN_SIZE": e.DELAY_MIN_SIZE,
        "BURST": e.BURST,
        "MAX_GAP": e.MAX_GAP,
        "BETA": e.BETA,
        "GROWTH": e.GROWTH,
        "HEADROOM": e.HEADROOM,
        "LOSS_HIGH": e.LOSS_HIGH,
        "LOSS_LOW": e.LOSS_LOW,
        "LOSS_PERSIST": e.LOSS_PERSIST,
        "WINDOW": e.WINDOW,
        "PROBE_FRESH": e.PROBE_FRESH,
        "MIN_SPAN": 0.25,  # _Window.rate's minimum_span default
        "TREND_WINDOW": t.WINDOW,
        "TREND_RESUM": t.RESUM,
        "SMOOTHING": t.SMOOTHING,
        "GAIN": t.GAIN,
        "K_UP": t.K_UP,
        "K_DOWN": t.K_DOWN,
    }
    assert python == _twcc.CONSTANTS
    assert e.HISTORY & (e.HISTORY - 1) == 0


def test_the_c_state_ends_where_the_python_one_does_in_closed_loops_with_probes() -> None:
    """The layer selector's closed loop (probe clusters tag packets: their feedback takes the
    Python scan and the C state's ``apply``; the rest ``take``, whole): the same layers,
    switches and estimates to the last bit, for links that dip, lose and queue."""
    from relay.media.layer_selector import Layer

    ladder = (Layer("720p", 1_500_000), Layer("360p", 600_000), Layer("180p", 200_000))
    links = (
        Link(capacity_bps=1e6, queue=0.1),
        Link(loss=0.05, delay=0.02),
        Link(dip=(5.0, 15.0, 4e5), queue=0.2),
        Link(capacity_bps=4e5),
    )
    probed = 0
    for seed, link in enumerate(links):
        a = run_adaptive(link, ladder, seconds=30, start="720p", seed=seed)
        b = run_adaptive(link, ladder, seconds=30, start="720p", seed=seed, native=False)
        assert a.estimates == b.estimates and a.switches == b.switches
        assert a.probe_packets == b.probe_packets
        assert len(a.estimates) >= 59
        probed += a.probe_packets
    assert probed > 0  # the Python scan + C apply path ran


def test_a_c_state_refuses_a_second_init_and_odd_histories() -> None:
    from array import array

    good = (array("l", [-1]) * 8, array("d", [0.0]) * 8, array("l", [0]) * 8, bytearray(8))
    state = _twcc.TwccState(*good, 50.0, 10.0)
    with pytest.raises(RuntimeError):
        state.__init__(*good, 50.0, 10.0)
    odd = (array("l", [-1]) * 6, array("d", [0.0]) * 6, array("l", [0]) * 6, bytearray(6))
    with pytest.raises(ValueError):
        _twcc.TwccState(*odd, 50.0, 10.0)
    for bad in (  # arrays of the wrong kind, an acked buffer that cannot be written
        (array("i", [-1]) * 8, *good[1:]),
        (good[0], array("f", [0.0]) * 8, *good[2:]),
        (*good[:3], bytearray(6)),
        (*good[:3], bytes(8)),
    ):
        with pytest.raises((ValueError, TypeError, BufferError)):
            _twcc.TwccState(*bad, 50.0, 10.0)
    assert state.take(b"\x00", 0.0, -1.0, 0.0, 0.0) == 1  # malformed: nothing taken
    assert state.feedbacks == 0 and state.twcc_at is None
