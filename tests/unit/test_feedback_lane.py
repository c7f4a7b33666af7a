"""A viewer's feedback lane (relay/rtc/_rtcp_reader.c, ``bind``/``take``): lone transport-cc
feedback from the socket into the estimator's TwccState without Python. Held to its Python
reference (``PyRtcpReader.take``) on impaired SRTCP traces (the same verdicts, the same calls of
the state and of every callback), to the read-callback path it stands in for (the same estimator
counts and acknowledgements), and fuzzed with lying and forged feedback (the port's recvmmsg
loop offering it SRTCP: tests/live/test_feedback_lane_port.py)."""

from __future__ import annotations

import os
import random
import sys
import time
from array import array
from typing import Any

import pytest
from pylibsrtp import Session

from relay.media import estimator as estimator_module
from relay.media.cc_feedback import build_transport_feedback
from relay.media.estimator import BandwidthEstimator
from relay.rtc import rtcp_reader
from relay.rtc.rtcp_reader import RtcpReader, new_rtcp_reader
from tests.unit.test_rtcp_reader import compounds, lying_twcc, rr, sessions

pytestmark = pytest.mark.skipif(not rtcp_reader.NATIVE, reason="the C reader is not built")


class Recorder:
    """A TwccState seen through what a lane does with it: every take (without its ``now``)
    and what the callbacks got; ``lost_packets`` read through."""

    def __init__(self, est: BandwidthEstimator) -> None:
        self._state = est._cc
        self.est = est
        self.takes: list[tuple[bytes, float, float, float]] = []
        self.calls: list[tuple[Any, ...]] = []
        self.ticks = [0, 0, 0]

    @property
    def lost_packets(self) -> int:
        return int(self._state.lost_packets)

    def take(self, fci: bytes, now: float, probe_bps: float, probe_at: float, rtt: float) -> int:
        self.takes.append((bytes(fci), probe_bps, probe_at, rtt))
        return int(self._state.take(fci, now, probe_bps, probe_at, rtt))

    def taken(self, fci: bytes, now: float, code: int, before: int) -> None:
        self.calls.append(("taken", bytes(fci), code, before))
        self.est.taken(fci, now, code, before)

    def slow(self, fcis: tuple[bytes, ...], rest: bytes) -> None:
        self.calls.append(("slow", fcis, rest))
        for fci in fcis:
            self.est.on_transport_feedback(fci, time.monotonic())

    def tick(self, rx_bytes: int, rx_packets: int, feedbacks: int, now: float) -> None:
        self.ticks[0] += rx_bytes
        self.ticks[1] += rx_packets
        self.ticks[2] += feedbacks

    def bind(self, reader: RtcpReader) -> None:
        reader.bind(self, self.est.lane_params, self.taken, self.slow, self.tick)


def counts(est: BandwidthEstimator) -> tuple[Any, ...]:
    """What does not depend on when a feedback was taken: the counters and which packets were
    acknowledged."""
    cc = est._cc
    return (cc.feedbacks, cc.unknown, cc.lost_packets, cc.refused, est.malformed, bytes(est._acked))


def lone_trace(rng: random.Random, count: int, first: int) -> list[bytes]:
    """Mostly Chromium's lone feedback about what was sent (from ``first`` on), some lying."""
    out = []
    seq = first
    for _ in range(count):
        if rng.random() < 0.1:
            out.append(lying_twcc(rng))
            continue
        n = rng.randrange(1, 40)
        arrivals = [None if rng.random() < 0.05 else 0.01 + i * 0.001 for i in range(n)]
        out.append(build_transport_feedback(seq, arrivals))
        seq = (seq + n) & 0xFFFF
    return out


def estimators(*natives: bool) -> list[BandwidthEstimator]:
    ests = [BandwidthEstimator(native=n) for n in natives]
    rng = random.Random(5)
    now = time.monotonic()
    sizes = [rng.choice((120, 1200, 300)) for _ in range(3000)]
    for est in ests:
        for i in range(0, len(sizes), 30):
            est.record(sizes[i : i + 30], now)
    return ests


@pytest.mark.parametrize("seed", range(3))
def test_the_c_lane_does_what_its_python_reference_does(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(estimator_module, "FEEDBACK_RATE", 1e9)  # replayed faster than real time
    rng = random.Random(seed)
    tx, a, b = sessions()
    c_reader, py_reader = new_rtcp_reader(a), new_rtcp_reader(b, native=False)
    assert rtcp_reader.laneable(c_reader) and not rtcp_reader.laneable(py_reader)
    c_est, py_est = estimators(True, True)
    c_rec, py_rec = Recorder(c_est), Recorder(py_est)
    c_rec.bind(c_reader)
    py_rec.bind(py_reader)
    plain = lone_trace(rng, 400, 0) + compounds(rng, 200)
    rng.shuffle(plain)
    sent = [tx.protect_rtcp(d) for d in plain if len(d) >= 8]
    trace: list[Any] = []
    for i, data in enumerate(sent):
        trace.append(data)
        r = rng.random()
        if r > 0.95:
            trace.append(rng.choice(sent))  # replayed
        elif r > 0.9:
            forged = bytearray(data)
            forged[rng.randrange(8, len(forged))] ^= 1 << rng.randrange(8)
            trace.append(bytes(forged))
        elif r > 0.88:
            trace.append(b"\x8f\xcd" + os.urandom(rng.randrange(0, 1600)))
        if i == 300:  # a probe cluster waits: feedback goes the slow way
            trace.append("probe")
        if i == 400:
            trace.append("done")
    verdicts = []
    for item in trace:
        if item == "probe":
            for est in (c_est, py_est):
                est.begin_probe(1, time.monotonic())
            continue
        if item == "done":
            for est in (c_est, py_est):
                est.end_probe(time.monotonic())
                est.take_probe_results(time.monotonic() + 10)
            continue
        verdicts.append((c_reader.take(item), py_reader.take(item)))
    c_reader.flush()
    py_reader.flush()
    assert all(x == y for x, y in verdicts)
    assert sum(x for x, _ in verdicts) > 200 and sum(not x for x, _ in verdicts) > 30
    assert c_rec.takes == py_rec.takes and len(c_rec.takes) > 150
    assert c_rec.calls == py_rec.calls
    assert {c[0] for c in c_rec.calls} == {"taken", "slow"}
    assert c_rec.ticks == py_rec.ticks and c_rec.ticks[2] == c_reader.lane_feedbacks > 150
    assert py_reader.lane_feedbacks == c_reader.lane_feedbacks
    assert counts(c_est) == counts(py_est)


def test_the_lane_leaves_the_estimator_as_the_read_callback_path_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the lane takes in C, and what it leaves to ``slow``, end where the read callback's
    path (``read``, then ``on_transport_feedback`` per FCI) ends: for the C estimator and for
    the Python one, whose ``TwccState`` the lane calls just the same."""
    monkeypatch.setattr(estimator_module, "FEEDBACK_RATE", 1e9)
    rng = random.Random(41)
    key = bytes(range(30))
    lane_c, lane_py, path = estimators(True, False, True)
    plain = lone_trace(rng, 500, 0) + [d + rr() for d in lone_trace(rng, 50, 1000)]
    tx = sessions()[0]
    sent = [tx.protect_rtcp(d) for d in plain]
    readers = []
    for est in (lane_c, lane_py):
        reader = new_rtcp_reader(sessions_with(key))
        lane = est.lane() if est.native else (est._cc, est.lane_params, est.taken)
        assert lane is not None

        def slow(fcis: tuple[bytes, ...], rest: bytes, est: BandwidthEstimator = est) -> None:
            for fci in fcis:
                est.on_transport_feedback(fci, time.monotonic())

        reader.bind(*lane, slow, lambda *_: None)
        readers.append(reader)
    general = new_rtcp_reader(sessions_with(key))
    for data in sent:
        assert all(r.take(data) for r in readers)
        split = general.read(data)
        assert split is not None
        for fci in split[0]:
            path.on_transport_feedback(fci, time.monotonic())
    assert lane_c.lane() is not None and lane_py.lane() is None
    assert counts(lane_c) == counts(path) == counts(lane_py)
    assert path._cc.feedbacks > 500 and path._cc.lost_packets > 0 and path.malformed > 10


def sessions_with(key: bytes) -> Session:
    from pylibsrtp import Policy

    return Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))


def test_lying_and_forged_feedback_never_raises_and_is_held_to_the_rate_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A viewer that floods the lane: forged datagrams are left (False) without touching the
    estimator; authentic lying feedback is taken at most at the estimator's rate (its
    ``refused`` grows), and no callback's failure escapes ``take``."""
    rng = random.Random(7)
    tx, rx, _ = sessions()
    (est,) = estimators(True)
    reader = new_rtcp_reader(rx)
    lane = est.lane()
    assert lane is not None

    def failing(*_: Any) -> None:
        raise RuntimeError("a callback failed")

    reader.bind(*lane[:2], failing, failing, failing)
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)  # the C lane reports so
    before = counts(est)
    forged = [b"\x8f\xcd" + os.urandom(rng.randrange(10, 1700)) for _ in range(3000)]
    assert not any(reader.take(d) for d in forged)
    assert counts(est) == before
    started = time.monotonic()
    lying = [tx.protect_rtcp(lying_twcc(rng)) for _ in range(3000)]
    assert all(reader.take(d) for d in lying)
    elapsed = time.monotonic() - started
    cc = est._cc
    rate, burst = estimator_module.FEEDBACK_RATE, estimator_module.FEEDBACK_BURST
    assert cc.feedbacks + est.malformed <= burst + rate * elapsed + 1
    assert cc.refused >= 3000 - (burst + rate * elapsed + 1)
    assert unraisable  # the failing callbacks were reported, not raised
    with pytest.raises(TypeError):
        reader.take(bytearray(20))  # type: ignore[arg-type]
    unbound = new_rtcp_reader(sessions()[1])
    assert not unbound.take(lying[0])  # not bound: untouched


def test_lane_params_follow_the_estimator() -> None:
    est = BandwidthEstimator()
    assert list(est.lane_params) == [-1.0, float("-inf"), 0.0, 0.0]
    est.on_rtt(0.08)
    est.begin_probe(3, 1.0)
    assert list(est.lane_params) == [-1.0, float("-inf"), 0.08, 1.0]
    est.end_probe(1.1)
    est.take_probe_results(5.0)  # measured (with nothing) after its timeout
    assert est.lane_params[3] == 0.0
    assert array("d", est.lane_params).typecode == "d"
