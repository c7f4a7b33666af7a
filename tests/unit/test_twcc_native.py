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
from tests.support.link_trace import Link, run_trace

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
    trend = est._trend
    return (
        est.snapshot(now),
        est._group,
        est._prev,
        est._delay_target,
        est._loss_target,
        list(est._acked),
        list(est._seq),
        list(est._time),
        list(est._size),
        est.next_sequence,
        trend.accumulated,
        trend.smoothed,
        trend.threshold,
        list(trend.points),
        est._acked_bytes.total(now),
        est._lost.total(now),
        est._received.total(now),
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


def test_scan_refuses_history_arrays_of_the_wrong_kind() -> None:
    from array import array

    body = fci(build_transport_feedback(0, [0.1]))
    good = (array("l", [-1]) * 8, array("d", [0.0]) * 8, array("l", [0]) * 8, bytearray(8))
    args = (1.0, 5.0, 300, 0.005, -1.0, -1.0, -1.0)
    assert _twcc.scan(body, *good, *args)[3] == 1  # unknown: never sent
    for bad in (
        (array("i", [-1]) * 8, *good[1:]),
        (good[0], array("f", [0.0]) * 8, *good[2:]),
        (*good[:3], bytearray(6)),
        (*good[:3], bytes(8)),
    ):
        with pytest.raises((ValueError, TypeError, BufferError)):
            _twcc.scan(body, *bad, *args)
