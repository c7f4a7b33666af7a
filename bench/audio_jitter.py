"""Where an aiortc viewer's audio goes under loss: the link, then aiortc's own audio jitter
buffer, stage by stage (no sockets: aiortc's ``JitterBuffer`` fed a numbered Opus stream
through a seeded random loss, as ``bench.netbed``'s router drops it).

    python -m bench.audio_jitter [--seconds 30] [--loss 0,0.02,0.05] [--seed 401]

aiortc's ``RTCRtpReceiver`` gives audio ``JitterBuffer(capacity=16, prefetch=4)`` and sends no
NACK for it. A frame leaves that buffer only when every packet from its origin is there, so a
lost packet holds everything behind it until the buffer overflows 16 packets later; the
overflow then throws away frames that did arrive (``smart_remove``) and the buffer stays deep.
Printed per loss: packets sent, lost on the link, received, frames the buffer emitted, and the
frames it dropped itself (received, never emitted) per packet lost on the link.
"""

from __future__ import annotations

import argparse
import random

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

OPUS_FRAME = 960  # 20 ms at 48 kHz


class Depayloaded(RtpPacket):
    """A packet as aiortc's receiver hands it to the jitter buffer: its depayloaded data set."""

    def __init__(self, sequence_number: int, timestamp: int, data: bytes) -> None:
        super().__init__(payload_type=111, sequence_number=sequence_number, timestamp=timestamp)
        self._data = data


def through_aiortc(packets: int, loss: float, seed: int) -> dict[str, int]:
    """A 50-a-second Opus stream of ``packets`` through ``loss`` and aiortc's audio jitter
    buffer (as its receiver sets it up): what each stage kept."""
    rng = random.Random(seed)
    buffer = JitterBuffer(capacity=16, prefetch=4)
    received = emitted = 0
    for i in range(packets):
        if rng.random() < loss:
            continue
        received += 1
        _, frame = buffer.add(Depayloaded(i & 0xFFFF, OPUS_FRAME * i, b"o"))
        emitted += frame is not None
    return {"sent": packets, "received": received, "emitted": emitted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audio_jitter", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--loss", default="0,0.02,0.05")
    parser.add_argument("--seed", type=int, default=401)
    args = parser.parse_args(argv)
    packets = int(50 * args.seconds)
    print("| link loss | sent | lost on the link | received | emitted (%) | dropped by the buffer "
          "| dropped per link loss |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for loss in (float(x) for x in args.loss.split(",")):
        r = through_aiortc(packets, loss, args.seed)
        lost = r["sent"] - r["received"]
        dropped = r["received"] - r["emitted"]
        per = "-" if not lost else f"{dropped / lost:.1f}"
        print(f"| {100 * loss:.0f} % | {r['sent']} | {lost} | {r['received']} | {r['emitted']} "
              f"({100 * r['emitted'] / r['sent']:.1f}) | {dropped} | {per} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
