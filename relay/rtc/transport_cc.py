"""Transport-cc feedback to a publisher: drives relay.media.twcc_feedback on one peer connection.

``negotiate`` (between setRemoteDescription and the answer) answers the publisher's transport-wide
sequence numbers and ``transport-cc`` feedback and taps every arriving packet's number; a task
started by the first such packet sends the feedback on the receiver's RTCP path when it is due,
and ends when the transport closes. A publisher that offers no transport-cc (ffmpeg, OBS) is left
to aiortc's REMB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial

from aiortc import RTCPeerConnection, RTCRtpReceiver

from relay.media.twcc_feedback import (
    TRANSPORT_CC_URI,
    FeedbackStats,
    TransportFeedbackGenerator,
    transport_sequence_number,
)
from relay.rtc.adapter import (
    negotiate_transport_cc,
    receiver_rtcp_ssrc,
    send_rtcp,
    tap_transport_sequence,
)

log = logging.getLogger(__name__)

IDLE_CHECK = 1.0
"""Seconds between checks that the transport still lives while no packet arrives."""


class TransportCcFeedback:
    """Transport-cc feedback for one publisher's peer connection (all its m-sections share one
    transport: BUNDLE)."""

    def __init__(
        self,
        *,
        interval: float = 0.05,
        keep_remb: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._generator = TransportFeedbackGenerator(interval=interval)
        self._keep_remb = keep_remb
        self._clock = clock
        self._receiver: RTCRtpReceiver | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.negotiated = False
        self.errors = 0
        self.send_failures = 0

    @property
    def stats(self) -> FeedbackStats:
        return self._generator.stats

    def negotiate(self, pc: RTCPeerConnection) -> bool:
        """Answer transport-cc where the offer (set already) has it, and tap the transport."""
        ext_id = negotiate_transport_cc(pc, TRANSPORT_CC_URI, keep_remb=self._keep_remb)
        self.negotiated = ext_id is not None
        if ext_id is not None:
            transceivers = sorted(pc.getTransceivers(), key=lambda t: t.kind != "video")
            self._receiver = transceivers[0].receiver
            tap_transport_sequence(
                pc, partial(transport_sequence_number, ext_id=ext_id), self._on_packet, self._clock
            )
        return self.negotiated

    def _on_packet(self, seq: int, ssrc: int, arrival: float) -> None:
        """Runs in aiortc's receive loop: never raises."""
        try:
            full = self._generator.record(seq, arrival, ssrc)
            if full or self._generator.pending == 1:  # a deadline begins, or feedback is due
                self._wake.set()
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run())
        except Exception:
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.exception("transport-cc bookkeeping failed (%d so far)", self.errors)

    async def _run(self) -> None:
        try:
            await self._send_loop()
        except asyncio.CancelledError:
            raise
        except Exception:  # the anchor's media goes on; it only loses its feedback
            log.exception("transport-cc feedback stopped")

    async def _send_loop(self) -> None:
        receiver = self._receiver
        assert receiver is not None
        generator = self._generator
        while receiver.transport.state not in ("closed", "failed"):
            deadline = generator.next_deadline()
            now = self._clock()
            if deadline is None or (deadline > now and generator.pending < generator.max_pending):
                wait = IDLE_CHECK if deadline is None else min(deadline - now, IDLE_CHECK)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.clear()
                continue
            ssrc = receiver_rtcp_ssrc(receiver)
            if ssrc is None:  # no answer yet: nothing to send from
                await asyncio.sleep(generator.interval)
                continue
            generator.sender_ssrc = ssrc
            for packet in generator.build(now):
                if not await send_rtcp(receiver, packet):
                    self.send_failures += 1

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
