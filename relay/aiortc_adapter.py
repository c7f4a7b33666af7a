"""The one place that touches aiortc's private attributes (pinned: aiortc >=1.14,<1.17).

Two hooks make encoded forwarding possible:

* ingest tap: the receiver's jitter buffer is replaced, before the first packet, by one that hands
  every depayloaded RTP packet to a callback and never feeds aiortc's decoder thread (which then
  idles until the receiver stops). NACK generation, RTX unwrapping and RTCP stay aiortc's.
* pre-packed sender: the sender's encoder is replaced by one whose ``pack`` returns the payloads a
  frame already carries, and its keyframe hook is redirected to the hub, so viewer PLIs reach the
  anchor instead of a (non-existent) local encoder.

``tests/test_aiortc_adapter.py`` fails loudly if an upgrade moves any of these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from .media import EncodedFrame

SUPPORTED = ((1, 14), (1, 17))  # [lower, upper)

PacketSink = Callable[[Any, RTCRtpCodecParameters], None]


class AdapterError(RuntimeError):
    """aiortc no longer has the internals this module relies on."""


def _aiortc_version() -> tuple[int, int]:
    major, minor = version("aiortc").split(".")[:2]
    return int(major), int(minor)


def check_version() -> None:
    v = _aiortc_version()
    if not SUPPORTED[0] <= v < SUPPORTED[1]:
        raise AdapterError(f"aiortc {v} is outside the supported range {SUPPORTED}")


class _TapBuffer:
    """Stands in for aiortc's JitterBuffer: forwards packets, never returns a frame."""

    def __init__(self, receiver: RTCRtpReceiver, sink: PacketSink) -> None:
        codecs: dict[int, RTCRtpCodecParameters] = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        self._codecs = codecs
        self._sink = sink

    @property
    def capacity(self) -> int:
        return 0

    def add(self, packet: Any) -> tuple[bool, None]:
        codec = self._codecs.get(packet.payload_type)
        if codec is not None:
            self._sink(packet, codec)
        return False, None


def install_ingest_tap(receiver: RTCRtpReceiver, sink: PacketSink) -> None:
    """Route the receiver's depayloaded packets (``packet._data``) to ``sink``; install before
    the first packet (right after the transceiver exists)."""
    if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer") or not hasattr(
        receiver, "_RTCRtpReceiver__codecs"
    ):
        raise AdapterError("RTCRtpReceiver internals changed: no jitter buffer / codecs")
    receiver._RTCRtpReceiver__jitter_buffer = _TapBuffer(receiver, sink)


def packet_data(packet: Any) -> bytes:
    """The depayloaded bytes aiortc stores on an RTP packet before its jitter buffer."""
    data: bytes = getattr(packet, "_data", b"")
    return data


def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> asyncio.Future[None]:
    """Ask the remote sender for a keyframe (RTCP PLI) through the receiver's RTCP path."""
    return asyncio.ensure_future(receiver._send_rtcp_pli(media_ssrc))


class _PrepackedEncoder:
    """Encoder stand-in for frames that are already RTP payloads."""

    def pack(self, frame: EncodedFrame) -> tuple[list[bytes], int]:
        return list(frame.payloads), frame.timestamp & 0xFFFFFFFF

    def encode(self, *_: object) -> tuple[list[bytes], int]:  # pragma: no cover - never decoded
        raise AdapterError("pre-packed sender was given a raw frame")


def install_prepacked_sender(sender: RTCRtpSender, on_keyframe_request: Callable[[], None]) -> None:
    """Make ``sender`` send EncodedFrames as-is and route PLI/FIR to ``on_keyframe_request``."""
    if not hasattr(sender, "_RTCRtpSender__encoder") or not hasattr(sender, "_send_keyframe"):
        raise AdapterError("RTCRtpSender internals changed: no encoder / keyframe hook")
    sender._RTCRtpSender__encoder = _PrepackedEncoder()
    sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]


def set_transceiver_codecs(transceiver: Any, codecs: list[RTCRtpCodecParameters]) -> None:
    """Narrow an already-negotiated transceiver's codec list (before the answer is created)."""
    transceiver._codecs = codecs
