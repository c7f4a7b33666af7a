"""The impairment router: a process that joins each leg's two TUN devices (one in the gateway's
namespace, one in the endpoint's) and carries every IP packet between them through an
``Impairment`` per direction.

Run by ``bed.NetBed`` as ``python -m bench.netbed.forwarder CONFIG_JSON``: it creates the TUN
devices (they vanish with this process), prints ``ready``, then answers ``stats`` lines on stdin
with one JSON line and exits when stdin closes. One thread, epoll, a heap of timed deliveries.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.netbed.impairment import Impairment, LinkSpec
from bench.netbed.playback import percentile

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_BATCH = 64
LATE_SAMPLES = 50_000


def open_tun(name: str) -> int:
    """A non-blocking TUN device (IP packets, no packet-info header) named ``name``."""
    if len(name) > 15:
        raise ValueError(f"interface name too long: {name}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass(eq=False)
class Direction:
    leg: str
    name: str  # "up" (endpoint -> gateway) or "down"
    impairment: Impairment
    out_fd: int
    delivered: int = 0
    write_errors: int = 0

    def stats(self) -> dict[str, Any]:
        imp = self.impairment
        return {
            "packets": imp.packets,
            "bytes": imp.bytes,
            "dropped": imp.dropped,
            "reordered": imp.reordered,
            "delivered": self.delivered,
            "write_errors": self.write_errors,
        }


@dataclass(eq=False)
class Router:
    directions: dict[int, Direction] = field(default_factory=dict)  # by the fd read from
    _heap: list[tuple[float, int, int, bytes]] = field(default_factory=list)
    _seq: int = 0
    late: list[float] = field(default_factory=list)  # seconds written after due (a ring)
    _late_i: int = 0

    def add_leg(
        self, name: str, gw_fd: int, ep_fd: int, up: LinkSpec, down: LinkSpec, rng: random.Random
    ) -> None:
        self.directions[ep_fd] = Direction(name, "up", Impairment(up, rng), gw_fd)
        self.directions[gw_fd] = Direction(name, "down", Impairment(down, rng), ep_fd)

    def _write(self, direction: Direction, packet: bytes, due: float) -> None:
        try:
            os.write(direction.out_fd, packet)
            direction.delivered += 1
        except OSError:
            direction.write_errors += 1
        late = time.monotonic() - due
        if len(self.late) < LATE_SAMPLES:
            self.late.append(late)
        else:
            self.late[self._late_i] = late
            self._late_i = (self._late_i + 1) % LATE_SAMPLES

    def readable(self, fd: int) -> None:
        direction = self.directions[fd]
        for _ in range(MAX_BATCH):
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                return
            now = time.monotonic()
            due = direction.impairment.decide(len(packet), now)
            if due is None:
                continue
            if due <= now:
                self._write(direction, packet, now)
            else:
                self._seq += 1
                heapq.heappush(self._heap, (due, self._seq, fd, packet))

    def flush(self) -> float | None:
        """Deliver what is due; seconds until the next delivery (None: nothing waits)."""
        heap = self._heap
        while heap:
            now = time.monotonic()
            due = heap[0][0]
            if due > now:
                return due - now
            _, _, fd, packet = heapq.heappop(heap)
            self._write(self.directions[fd], packet, due)
        return None

    def stats(self) -> dict[str, Any]:
        legs: dict[str, dict[str, Any]] = {}
        for d in self.directions.values():
            legs.setdefault(d.leg, {})[d.name] = d.stats()
        late_us = [x * 1e6 for x in self.late]
        return {
            "legs": legs,
            "cpu_s": time.process_time(),
            "late_us_p50": percentile(late_us, 50),
            "late_us_p95": percentile(late_us, 95),
            "late_us_max": max(late_us) if late_us else None,
            "queued": len(self._heap),
        }


def serve(config: dict[str, Any]) -> None:
    rng = random.Random(config.get("seed", 1))
    router = Router()
    fds: list[int] = []
    for leg in config["legs"]:
        gw_fd, ep_fd = open_tun(leg["gw_tun"]), open_tun(leg["ep_tun"])
        fds += [gw_fd, ep_fd]
        router.add_leg(
            leg["name"],
            gw_fd,
            ep_fd,
            LinkSpec.from_dict(leg["up"]),
            LinkSpec.from_dict(leg["down"]),
            rng,
        )
    poller = select.epoll()
    for fd in fds:
        poller.register(fd, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.EPOLLIN)
    print("ready", flush=True)
    pending = b""
    while True:
        wait = router.flush()
        for fd, _ in poller.poll(0.5 if wait is None else wait):
            if fd != stdin:
                router.readable(fd)
                continue
            chunk = os.read(stdin, 4096)
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip() == b"stats":
                    print(json.dumps(router.stats()), flush=True)


def main() -> int:
    serve(json.loads(sys.argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
