"""What one full pass of the cyclic collector costs with an audience's objects alive, and with
them frozen (relay.ops.gc_freezer).

Builds ``--viewers`` sendonly aiortc peer connections (two transceivers, a local description:
the objects a viewer session's peer connection holds before its transport starts; a connected
session holds more, ~1,700 tracked objects measured at 100 viewers), reports the tracked objects
per peer connection, then times ``gc.collect()`` on the thread's CPU clock (other processes do
not count) with them all in the collector's generations, and after ``gc.freeze()``.

    python -m bench.gc_pass --viewers 100,250,500
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack


def full_pass_ms(repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.thread_time()
        gc.collect()
        runs.append(1000 * (time.thread_time() - t0))
    return statistics.median(runs)


async def one(viewers: int) -> str:
    gc.collect()
    base = len(gc.get_objects())
    pcs = []
    for _ in range(viewers):
        pc = RTCPeerConnection()
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        pcs.append(pc)
    tracked = len(gc.get_objects())
    live = full_pass_ms()
    gc.freeze()
    frozen = full_pass_ms()
    gc.unfreeze()
    for pc in pcs:
        await pc.close()
    per = (tracked - base) / viewers
    return (
        f"| {viewers} | {per:.0f} | {tracked} | {live:.1f} | {frozen:.2f} "
        f"| {live * 1000 / max(tracked, 1):.3f} |"
    )


async def run(sizes: list[int]) -> None:
    print("| peer connections | tracked per pc | tracked in all | full pass ms (cpu) "
          "| frozen: full pass ms | us per object |")  # fmt: skip
    print("|---" * 6 + "|")
    for n in sizes:
        print(await one(n), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", default="100,250,500")
    args = parser.parse_args()
    asyncio.run(run([int(x) for x in args.viewers.split(",") if x]))


if __name__ == "__main__":
    main()
