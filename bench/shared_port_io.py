"""The shared UDP port's own I/O cost per datagram: recvmmsg/sendmmsg (``relay/rtc/_udp_batch.c``)
against the recvfrom/sendto fallback, through the real ``SharedUdpPort`` and its mux table.

``--sessions`` sessions are registered on a port on loopback, each bound to its own sender
socket by an authenticated Binding request (as a peer's check binds it); then every sender sends
``--datagrams`` RTP-sized datagrams in rounds while the port's reader routes them to the
sessions' sinks (which count them). Reported per mode: the reader's CPU (thread time of the
event loop, the kernel's receive path included) per datagram received, and the CPU of
``SharedUdpPort.sendto`` + its per-turn flush per datagram sent to the same sessions.

    python -m bench.shared_port_io                      # 100 sessions, both modes
    python -m bench.shared_port_io --sessions 500 --datagrams 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import time
from typing import Any

from aioice import stun

from relay.rtc import udp_batch
from relay.rtc.shared_port import SharedUdpPort

PAYLOAD = 1200


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.count += 1


async def measure(native: bool, sessions: int, datagrams: int) -> dict[str, float]:
    port = SharedUdpPort(native=native)
    await port.open("127.0.0.1", 0)
    number = port.port
    senders, sinks = [], []
    try:
        for i in range(sessions):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            senders.append(s)
            sink = Counter()
            sinks.append(sink)
            ufrag, pwd = f"bench{i:06d}", "p" * 22
            port.register(ufrag, pwd, sink)
            check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            check.attributes["USERNAME"] = f"{ufrag}:peer"
            check.add_message_integrity(pwd.encode())
            s.sendto(bytes(check), ("127.0.0.1", number))
        deadline = time.monotonic() + 10
        while sum(k.count for k in sinks) < sessions and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        base = sum(k.count for k in sinks)
        rtp = bytes([0x80, 0x60]) + os.urandom(PAYLOAD - 2)
        cpu = 0.0
        rounds = max(1, datagrams // 20)
        for _ in range(rounds):  # 20 per session per round: a turn's worth at a time
            for s in senders:
                for _ in range(20):
                    s.sendto(rtp, ("127.0.0.1", number))
            t0 = time.thread_time()
            await asyncio.sleep(0)  # the loop polls: the reader is scheduled after this task
            await asyncio.sleep(0)  # and has run
            cpu += time.thread_time() - t0
        total = sum(k.count for k in sinks) - base
        # sends: every session gets `datagrams` datagrams, a round per event-loop turn
        addrs = [s.getsockname() for s in senders]
        send_cpu = 0.0
        for _ in range(rounds):
            t0 = time.thread_time()
            for addr in addrs:
                for _ in range(20):
                    port.sendto(rtp, addr)
            await asyncio.sleep(0)  # the flush (scheduled before this task's wakeup)
            send_cpu += time.thread_time() - t0
            for s in senders:  # drain, outside the clock
                udp_batch.recv(s, 1000)
        sent = rounds * 20 * len(addrs)
        return {
            "received": float(total),
            "recv_us": 1e6 * cpu / max(total, 1),
            "sent": float(sent),
            "send_us": 1e6 * send_cpu / sent,
            "send_drops": float(port.send_drops),
            "batch": port.received / max(port.reads, 1),
        }
    finally:
        port.close()
        for s in senders:
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--datagrams", type=int, default=200, help="per session and direction")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    modes = [("recvmmsg/sendmmsg (C)", True), ("recvfrom/sendto (Python)", False)]
    if not udp_batch.NATIVE:
        modes = modes[1:]
    print(f"{args.sessions} sessions, load average {os.getloadavg()[0]:.1f}")
    print("| mode | received | reader CPU us/datagram | batch | sent | send CPU us/datagram |")
    print("|---|---|---|---|---|---|")
    for name, native in modes:
        runs = [
            asyncio.run(measure(native, args.sessions, args.datagrams)) for _ in range(args.repeat)
        ]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"| {name} | {med['received']:.0f} | {med['recv_us']:.2f} | {med['batch']:.0f} "
            f"| {med['sent']:.0f} | {med['send_us']:.2f} |"
        )


if __name__ == "__main__":
    main()
