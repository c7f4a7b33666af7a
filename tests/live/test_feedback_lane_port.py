"""The shared port's recvmmsg loop (relay/rtc/_udp_batch.c) offers a viewer's SRTCP to its
feedback lane (relay/rtc/_rtcp_reader.c): real loopback sockets."""

from __future__ import annotations

import random
import socket
import time

import pytest

from relay.rtc import rtcp_reader, udp_batch
from relay.rtc.rtcp_reader import new_rtcp_reader
from tests.unit.test_feedback_lane import estimators, lone_trace
from tests.unit.test_rtcp_reader import rr, sessions

pytestmark = pytest.mark.skipif(
    not (rtcp_reader.NATIVE and udp_batch.NATIVE), reason="the C reader or port is not built"
)


def test_the_port_loop_offers_srtcp_to_a_feedback_lane() -> None:
    """Through recvmmsg (relay/rtc/_udp_batch.c): a lone feedback from the viewer's address is
    taken into the estimator; its receiver report and an RTP packet are left to the read
    callback; another address's feedback is not offered."""
    tx, rx, _ = sessions()
    (est,) = estimators(True)
    reader = new_rtcp_reader(rx)
    lane = est.lane()
    assert lane is not None
    ticks: list[int] = []
    reader.bind(*lane, lambda *_: None, lambda *c: ticks.append(c[2]))
    viewer, node, other = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    try:
        for s in (viewer, node, other):
            s.bind(("127.0.0.1", 0))
        feedback = [tx.protect_rtcp(d) for d in lone_trace(random.Random(3), 5, 0)]
        report = tx.protect_rtcp(rr())
        rtp = bytes([0x80, 96, 0, 1]) + bytes(20)
        for data in (*feedback[:3], report, rtp, *feedback[3:]):
            viewer.sendto(data, node.getsockname())
        other.sendto(tx.protect_rtcp(lone_trace(random.Random(4), 1, 0)[0]), node.getsockname())
        time.sleep(0.05)
        udp_batch.enable_stamps(node)
        lanes = {viewer.getsockname(): reader.take}
        left, taken = udp_batch.recv_laned(node, 100, lanes)
        assert taken == 5 and reader.lane_feedbacks == 5 and est.feedbacks == 5
        assert sorted(d for d, _, _ in left) == sorted([report, rtp, left[-1][0]])
        assert {addr for _, addr, _ in left} == {viewer.getsockname(), other.getsockname()}
        reader.flush()
        assert sum(ticks) == 5
    finally:
        for s in (viewer, node, other):
            s.close()
