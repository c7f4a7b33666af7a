"""The shared UDP port's reader cost for an audience's small datagrams (transport-cc feedback,
~20 a second per viewer): sent in bursts (every viewer at once every 50 ms, as
``bench.load_viewers`` sends its feedback) or spread (each viewer at its own phase, as Chromium
viewers would), with the port's read pacing off and at ``--max-reads``.

A sender process on CPU 1 plays ``--viewers`` bound peers; the port reads on CPU 0 (run the
bench pinned: ``taskset -c 0``). Per mode: datagrams and readable events served a second, the
reader process's CPU per datagram, and how long a datagram waited from its kernel stamp to its
session (the wait pacing adds to an anchor's packets too).

    taskset -c 0 python -m bench.port_pacing --max-reads 0,500 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from aioice import stun

from relay.rtc.shared_port import SharedUdpPort

PASSWORD = "p" * 22
INTERVAL = 0.05  # s between one viewer's feedbacks


class Sink:
    def __init__(self, port: SharedUdpPort, waits: list[float]) -> None:
        self.port, self.waits = port, waits

    def datagram_received(self, data: bytes, addr: tuple[Any, ...], local: str) -> None:
        if self.port.arrival is not None:
            self.waits.append(time.monotonic() - self.port.arrival)


def send(port: int, mode: str, seconds: float, viewers: int) -> None:
    with contextlib.suppress(OSError):  # off the port's core (inherited: taskset -c 0)
        os.sched_setaffinity(0, {1})
    socks = []
    for i in range(viewers):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = f"v{i:07d}:peer"
        check.add_message_integrity(PASSWORD.encode())
        s.sendto(bytes(check), ("127.0.0.1", port))
    time.sleep(0.5)
    data = bytes([0x8F, 205]) + bytes(90)
    t0 = time.monotonic()
    step = INTERVAL if mode == "burst" else INTERVAL / viewers
    k = 0
    while time.monotonic() < t0 + seconds:
        for s in socks if mode == "burst" else (socks[k % viewers],):
            s.sendto(data, ("127.0.0.1", port))
        k += 1
        time.sleep(max(0.0, t0 + k * step - time.monotonic()))
    for s in socks:
        s.close()


async def window(
    port: SharedUdpPort,
    sender: multiprocessing.Process,
    settle: float,
    seconds: float,
    counts: Callable[[], tuple[int, ...]],
    settled: Callable[[], None] = lambda: None,
) -> tuple[float, float, tuple[int, ...]]:
    """Start ``sender``, let ``settle`` s pass, then measure ``seconds``: this process's CPU,
    the elapsed time and how much each of ``counts`` grew; the sender is joined and the port
    closed after."""
    sender.start()
    try:
        await asyncio.sleep(settle)
        settled()
        cpu0, counts0, t0 = time.process_time(), counts(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, elapsed = time.process_time() - cpu0, time.monotonic() - t0
        grown = tuple(b - a for a, b in zip(counts0, counts(), strict=True))
    finally:
        sender.join()
        port.close()
    return cpu, elapsed, grown


async def measure(mode: str, max_reads: float, viewers: int, seconds: float) -> dict[str, float]:
    port = SharedUdpPort(max_reads=max_reads)
    await port.open("127.0.0.1", 0)
    waits: list[float] = []
    for i in range(viewers):
        port.register(f"v{i:07d}", PASSWORD, Sink(port, waits))
    sender = multiprocessing.Process(target=send, args=(port.port, mode, seconds + 2, viewers))
    cpu, elapsed, (reads, got) = await window(
        port, sender, 1.5, seconds, lambda: (port.reads, port.received), waits.clear
    )
    w = sorted(waits) or [0.0]
    return {
        "datagrams/s": got / elapsed,
        "reads/s": reads / elapsed,
        "us/datagram": 1e6 * cpu / max(got, 1),
        "wait p50 ms": 1e3 * w[len(w) // 2],
        "wait p95 ms": 1e3 * w[int(0.95 * (len(w) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--max-reads", default="0,500", help="pacing rates to compare (0: off)")
    parser.add_argument("--modes", default="burst,spread")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2, help="the modes interleaved, repeated")
    args = parser.parse_args()
    import uvloop

    print(f"{args.viewers} viewers, a datagram each every {INTERVAL * 1e3:.0f} ms")
    print(
        "| mode | max_reads | datagrams/s | reads/s | reader us/datagram | wait p50 / p95 ms "
        "| load |"
    )
    print("|---|---|---|---|---|---|---|")
    for _ in range(args.rounds):
        for rate in (float(x) for x in args.max_reads.split(",")):
            for mode in args.modes.split(","):
                r = uvloop.run(measure(mode, rate, args.viewers, args.seconds))
                print(
                    f"| {mode} | {rate:.0f} | {r['datagrams/s']:.0f} | {r['reads/s']:.0f} "
                    f"| {r['us/datagram']:.1f} | {r['wait p50 ms']:.2f} / {r['wait p95 ms']:.2f} "
                    f"| {os.getloadavg()[0]:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
