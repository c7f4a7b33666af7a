"""One transport's SRTCP receive for a viewer's feedback: decrypt and split off its transport-cc
packets, in C when built.

A viewer's transport-cc feedback (Chromium: 10-20 datagrams a second) is taken by the shared
port's read callback (``relay/rtc/adapter.py``, ``_receive_feedback``) instead of crossing
aioice's queue and aiortc's receive task: ``read`` decrypts it with the transport's own pylibsrtp
session and returns the transport-cc FCIs for the estimator and the rest of the compound for
aiortc. The C reader (``_rtcp_reader.c`` beside it) does it in one call; ``PyRtcpReader``
(pylibsrtp's ``unprotect_rtcp`` and ``relay.media.cc_feedback.split_feedback``) is the fallback
and the reference the tests hold the C one to.
"""

from __future__ import annotations

from typing import Protocol

import pylibsrtp
from pylibsrtp import Session as SrtpSession

from relay.media.cc_feedback import split_feedback
from relay.rtc.srtp_writer import borrowable, borrowed

try:
    from . import _rtcp_reader as _native
except ImportError:  # built without a C compiler: PyRtcpReader
    _native = None  # type: ignore[assignment]

NATIVE = _native is not None and borrowable("srtp_unprotect_rtcp")
"""The C reader is built and matches the libsrtp pylibsrtp carries (``srtp_unprotect_rtcp`` has
``srtp_protect``'s signature)."""

Split = tuple[tuple[bytes, ...], bytes]


class RtcpReader(Protocol):
    def read(self, data: bytes, /) -> Split | None:
        """Decrypt one SRTCP datagram: None when it is not authentic (replayed, forged, another
        session's) or too long for the session (dropped, as aiortc drops them); else
        ``split_feedback`` of the plain compound."""
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


def new_rtcp_reader(session: SrtpSession, *, native: bool = True) -> RtcpReader:
    """The C reader when built and ``native``, else the Python one."""
    if native and NATIVE:
        unprotect, ctx = borrowed("srtp_unprotect_rtcp", session)
        reader: RtcpReader = _native.RtcpReader(unprotect, ctx, session)
        return reader
    return PyRtcpReader(session)
