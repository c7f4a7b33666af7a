"""One transport's SRTP receive: decrypt and parse an RTP packet, and depayload it, in C when
built.

Per anchor packet, pylibsrtp's ``unprotect`` (a cffi call and two copies) and aiortc's
``RtpPacket.parse`` (struct unpacks, a header extension list, a dataclass) cost more than the
decryption itself (issue 20). The C reader (``_rtp_reader.c`` beside it) does both in one call
and returns the same aiortc ``RtpPacket``; it also holds aiortc's per-SSRC receiver statistics
in C (``new_stream_statistics``); ``PyRtpReader`` is the fallback and the reference the
tests hold the C one to. Both decrypt with the transport's own pylibsrtp session; the C one
reaches pylibsrtp's binding (``Session._srtp``, ``srtp_unprotect``) and the negotiated ids of
aiortc's ``HeaderExtensionsMap`` (pinned with aiortc: ``tests/unit/test_rtp_reader.py`` fails
loudly if an upgrade moves them).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Protocol

import pylibsrtp
from aiortc.codecs.h264 import h264_depayload
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap, RtpPacket
from pylibsrtp import Session as SrtpSession

from relay.rtc.srtp_writer import borrowable, borrowed

try:
    from . import _rtp_reader as _native
except ImportError:  # built without a C compiler: PyRtpReader
    _native = None  # type: ignore[assignment]

NATIVE = _native is not None and borrowable("srtp_unprotect")
"""The C reader is built, importable and matches the libsrtp pylibsrtp carries (libsrtp 2's
``srtp_unprotect`` has ``srtp_protect``'s signature)."""

IDS = "_HeaderExtensionsMap__ids"
"""aiortc's HeaderExtensionsMap keeps the negotiated ids in a HeaderExtensions under this name."""


class RtpReader(Protocol):
    def read(self, data: bytes, /) -> RtpPacket | None:
        """Decrypt and parse one SRTP packet; None when it is not authentic (replayed, forged,
        another session's), too long for the session, or not a well-formed RTP packet (each
        dropped, as aiortc drops them)."""
        ...

    def parse(self, data: bytes, /) -> RtpPacket | None:
        """Parse a packet already in the clear (None: aiortc's parser would raise)."""
        ...

    def receive(self, data: bytes, /) -> RtpPacket | None:
        """``read``, except that a packet one of the reader's lanes takes (the C reader's:
        ``lane_add``) is handled in full and not returned (None)."""
        ...

    def take(self, data: bytes, /) -> bool:
        """Handle a packet a lane takes (decided from its header, in the clear in SRTP, before
        decrypting) in full, or drop it as not authentic: True; False: untouched."""
        ...

    @property
    def lanes(self) -> list[int]:
        """The SSRCs that have a lane."""
        ...

    def lane_add(
        self,
        ssrc: int,
        payload_type: int,
        depayload: int,
        stats: Any,
        push: Callable[..., Any],
        trackers: dict[int, Any] | None,
        tracker: Any,
        handler: Callable[..., None],
        /,
    ) -> bool:
        """Handle ``ssrc``'s plain in-order packets of ``payload_type`` in full (False: no
        room, or no lanes in this reader); see ``_rtp_reader.c``."""
        ...

    def lane_remove(self, ssrc: int, /) -> bool: ...

    def flush(self) -> None:
        """Every lane's pending counts to its handler now."""
        ...


class PyRtpReader:
    """pylibsrtp's ``unprotect`` and aiortc's ``RtpPacket.parse``, as aiortc's receive task
    runs them."""

    def __init__(self, session: SrtpSession, extensions: HeaderExtensionsMap) -> None:
        self._session = session
        self._extensions = extensions

    def read(self, data: bytes) -> RtpPacket | None:
        try:
            plain = self._session.unprotect(data)
        except (pylibsrtp.Error, ValueError):  # ValueError: longer than the session's buffer
            return None
        return self.parse(plain)

    def parse(self, data: bytes) -> RtpPacket | None:
        try:
            return RtpPacket.parse(data, self._extensions)
        except (ValueError, struct.error):  # struct.error: an extension of the wrong size
            return None

    receive = read  # no lanes: every packet goes aiortc's way
    lanes: list[int] = []

    def take(self, data: bytes) -> bool:
        return False

    def lane_add(self, *_: Any) -> bool:
        return False

    def lane_remove(self, ssrc: int) -> bool:
        return False

    def flush(self) -> None:
        pass


def extension_ids(extensions: HeaderExtensionsMap) -> HeaderExtensions:
    ids = getattr(extensions, IDS, None)
    if not isinstance(ids, HeaderExtensions):
        raise RuntimeError("aiortc internals changed: HeaderExtensionsMap has no ids")
    return ids


def new_rtp_reader(
    session: SrtpSession, extensions: HeaderExtensionsMap, *, native: bool = True
) -> RtpReader:
    """The C reader when built and ``native``, else the Python one."""
    if native and NATIVE:
        unprotect, ctx = borrowed("srtp_unprotect", session)
        reader: RtpReader = _native.RtpReader(
            unprotect, ctx, session, extension_ids(extensions), RtpPacket, HeaderExtensions
        )
        return reader
    return PyRtpReader(session, extensions)


def new_stream_statistics(clockrate: int, *, native: bool = True) -> Any:
    """aiortc's ``StreamStatistics`` (a receiver's per-SSRC figures for its RTCP receiver
    reports and getStats), in C when built and ``native``: the same fields and arithmetic."""
    if native and _native is not None:
        return _native.StreamStatistics(clockrate)
    return StreamStatistics(clockrate)


Depayloader = Callable[[bytes], bytes]

LANE_DEPAYLOADERS: dict[Callable[[bytes], bytes], int] = (
    {bytes: 0, _native.depayload_h264: 1, _native.depayload_vp8: 2} if _native is not None else {}
)
"""The depayloaders a C lane stands in for, by what ``depayloader`` returns (``bytes``: the
payload itself), as ``RtpReader.lane_add``'s ``depayload``."""


def lane_reader(reader: RtpReader) -> bool:
    """Whether ``reader`` can have lanes (the C one)."""
    return _native is not None and isinstance(reader, _native.RtpReader)


def lane_statistics(stats: Any) -> bool:
    """Whether a lane can count into ``stats`` (the C ``StreamStatistics``)."""
    return _native is not None and isinstance(stats, _native.StreamStatistics)


def depayloader(codec: str, *, native: bool = True) -> Depayloader | None:
    """What turns ``codec``'s RTP payloads into its bitstream as aiortc's ``depayload`` does
    (H264: Annex-B NAL units; VP8: without the payload descriptor; None: the payload itself),
    in C when built and ``native``. Raises ValueError where aiortc's raises."""
    name = codec  # as aiortc compares it
    if name == "H264":
        return _native.depayload_h264 if native and _native is not None else h264_depayload
    if name == "VP8":
        return _native.depayload_vp8 if native and _native is not None else vp8_depayload
    return None
