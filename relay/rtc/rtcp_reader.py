"""One transport's SRTCP receive for a viewer's feedback: decrypt and split off its transport-cc
packets, in C when built.

A viewer's transport-cc feedback (Chromium: 10-20 datagrams a second) is taken by the shared
port's read callback (``relay/rtc/adapter.py``, ``_receive_feedback``) instead of crossing
aioice's queue and aiortc's receive task: ``read`` decrypts it with the transport's own pylibsrtp
session and returns the transport-cc FCIs for the estimator and the rest of the compound for
aiortc. The C reader (``_rtcp_reader.c`` beside it) does it in one call; ``PyRtcpReader``
(pylibsrtp's ``unprotect_rtcp`` and ``relay.media.cc_feedback.split_feedback``) is the fallback
and the reference the tests hold the C one to.

Bound to an estimator's ``TwccState`` (``bind``), a reader is also a feedback lane: the shared
port's recvmmsg loop offers it the viewer's SRTCP (``take``), and a lone transport-cc datagram
goes from the socket to the C estimator with no Python frame; Python runs only for compounds,
probe clusters, a malformed FCI or a reported loss, and once a second for the counts
(``relay/rtc/adapter.py``, ``_feedback_lane``).
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Callable
from typing import Any, Protocol

import pylibsrtp
from pylibsrtp import Session as SrtpSession

from relay.media.cc_feedback import FMT_TRANSPORT_CC, RTCP_RTPFB, split_feedback
from relay.rtc.srtp_writer import borrowable, borrowed

try:
    from . import _rtcp_reader as _native
except ImportError:  # built without a C compiler: PyRtcpReader
    _native = None  # type: ignore[assignment]

NATIVE = _native is not None and borrowable("srtp_unprotect_rtcp")
"""The C reader is built and matches the libsrtp pylibsrtp carries (``srtp_unprotect_rtcp`` has
``srtp_protect``'s signature)."""

log = logging.getLogger(__name__)

Split = tuple[tuple[bytes, ...], bytes]
Taken = Callable[[bytes, float, int, int], None]
"""``BandwidthEstimator.taken(fci, now, code, lost_before)``."""
Slow = Callable[[tuple[bytes, ...], bytes], None]
"""What the port's read callback does with a split datagram (FCIs, the rest for aiortc)."""
Tick = Callable[[int, int, int, float], None]
"""``(rx_bytes, rx_packets, lone feedbacks, now)`` since the last call, once a second."""

TICK = 1.0
"""Seconds between a lane's calls of its tick."""
BUF_SIZE = 1500
"""pylibsrtp's session buffer: a longer datagram is refused."""


class RtcpReader(Protocol):
    def read(self, data: bytes, /) -> Split | None:
        """Decrypt one SRTCP datagram: None when it is not authentic (replayed, forged, another
        session's) or too long for the session (dropped, as aiortc drops them); else
        ``split_feedback`` of the plain compound."""
        ...

    def bind(
        self, state: Any, params: array[float], taken: Taken, slow: Slow, tick: Tick, /
    ) -> None:
        """Make ``take`` a feedback lane into ``state`` (a ``TwccState``; ``params``: the
        estimator's ``lane_params``)."""
        ...

    def take(self, data: bytes, /) -> bool:
        """A lane's offer: True when the datagram was SRTCP transport-cc feedback of this
        session and is handled (a lone feedback into the state; else ``slow``); False: untouched
        (not bound, not such feedback, or not authentic here: the caller's path decides)."""
        ...

    def flush(self) -> None:
        """The counts since the last tick to ``tick`` now."""
        ...

    @property
    def lane_feedbacks(self) -> int:
        """Lone feedback datagrams the lane took, monotonic."""
        ...


class PyRtcpReader:
    """pylibsrtp's ``unprotect_rtcp`` (as aiortc's receive task runs it) and ``split_feedback``."""

    def __init__(self, session: SrtpSession) -> None:
        self._session = session

    def read(self, data: bytes) -> Split | None:
        try:
            plain = self._session.unprotect_rtcp(data)
        except (pylibsrtp.Error, ValueError):  # ValueError: longer than the session's buffer
            return None
        return split_feedback(plain)

    _lane: tuple[Any, array[float], Taken, Slow, Tick] | None = None
    _due = 0.0
    _rx_bytes = _rx_packets = _feedbacks = 0
    lane_feedbacks = 0

    def bind(self, state: Any, params: array[float], taken: Taken, slow: Slow, tick: Tick) -> None:
        if len(params) != 4 or params.typecode != "d":
            raise ValueError("params: array('d') of 4")
        self._lane = (state, params, taken, slow, tick)
        self._due = 0.0

    def take(self, data: bytes) -> bool:
        if not isinstance(data, bytes):
            raise TypeError("data must be bytes")
        lane = self._lane
        if lane is None or not 12 <= len(data) <= BUF_SIZE or data[1] != RTCP_RTPFB:
            return False
        if data[0] & 0xDF != 0x80 | FMT_TRANSPORT_CC:
            return False
        try:
            plain = self._session.unprotect_rtcp(data)
        except (pylibsrtp.Error, ValueError):
            return False
        state, params, taken, slow, tick = lane
        self._rx_bytes += len(data)
        self._rx_packets += 1
        fcis, rest = split_feedback(plain)
        if not fcis or rest or params[3]:
            _reported(slow, fcis, rest)
        else:
            self._feedbacks += 1
            self.lane_feedbacks += 1
            now = time.monotonic()
            for fci in fcis:
                before = state.lost_packets
                try:
                    code = state.take(fci, now, params[0], params[1], params[2])
                except Exception:
                    log.exception("a feedback lane's take failed")
                    continue
                if code == 1 or state.lost_packets != before:
                    _reported(taken, fci, now, code, before)
        now = time.monotonic()
        if now >= self._due:
            self._due = now + TICK
            _reported(self._tick, tick, now)
        return True

    def flush(self) -> None:
        if self._lane is not None and (self._rx_packets or self._feedbacks):
            self._tick(self._lane[4], time.monotonic())

    def _tick(self, tick: Tick, now: float) -> None:
        counts = self._rx_bytes, self._rx_packets, self._feedbacks
        self._rx_bytes = self._rx_packets = self._feedbacks = 0
        tick(*counts, now)


def _reported(fn: Callable[..., None], *args: Any) -> None:
    """A lane's callback: its failure is logged, never raised (the port's read goes on), as
    the C lane reports it (unraisable)."""
    try:
        fn(*args)
    except Exception:
        log.exception("a feedback lane's callback failed")


def new_rtcp_reader(session: SrtpSession, *, native: bool = True) -> RtcpReader:
    """The C reader when built and ``native``, else the Python one."""
    if native and NATIVE:
        unprotect, ctx = borrowed("srtp_unprotect_rtcp", session)
        reader: RtcpReader = _native.RtcpReader(unprotect, ctx, session)
        return reader
    return PyRtcpReader(session)


def laneable(reader: RtcpReader) -> bool:
    """Whether ``reader`` can be the port's feedback lane (the C one: a Python ``take`` in the
    recvmmsg loop would cost what the lane saves)."""
    return _native is not None and isinstance(reader, _native.RtcpReader)
