"""UDP echo through a bed: the round trip from a leg to the gateway's namespace, against the
same echo within the gateway's namespace (no forwarder), and loss/throughput probes. Sockets
are opened in threads that entered the namespaces."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

from bench.netbed import netns
from bench.netbed.bed import GATEWAY_ADDRESS, NetBed
from bench.netbed.playback import percentile

ECHO_PORT = 7


@dataclass(frozen=True, slots=True)
class EchoResult:
    sent: int
    received: int
    rtt_us_p50: float | None
    rtt_us_p95: float | None

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0


class EchoServer:
    """A UDP echo on the gateway's address, in the gateway's namespace, until ``stop``."""

    def __init__(self, bed: NetBed, port: int = ECHO_PORT) -> None:
        self.port = port
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(bed.gateway_ns,), daemon=True)

    def _run(self, ns: str) -> None:
        netns.enter(ns)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((GATEWAY_ADDRESS, self.port))
            s.settimeout(0.1)
            self._ready.set()
            while not self._stop.is_set():
                try:
                    data, addr = s.recvfrom(65536)
                except TimeoutError:
                    continue
                s.sendto(data, addr)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the echo server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def echo(ns: str, count: int = 500, size: int = 200, timeout: float = 0.5) -> EchoResult:
    """``count`` sequential echoes from namespace ``ns`` to the gateway's echo server."""

    def run() -> EchoResult:
        rtts: list[float] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            payload = b"x" * size
            for i in range(count):
                tag = i.to_bytes(4, "big")
                t0 = time.perf_counter()
                s.sendto(tag + payload, (GATEWAY_ADDRESS, ECHO_PORT))
                try:
                    while True:  # skip a late echo of an earlier probe
                        data = s.recv(65536)
                        if data[:4] == tag:
                            rtts.append((time.perf_counter() - t0) * 1e6)
                            break
                except TimeoutError:
                    continue
        return EchoResult(count, len(rtts), percentile(rtts, 50), percentile(rtts, 95))

    return netns.run_in(ns, run, timeout=count * timeout + 30)


@dataclass(frozen=True, slots=True)
class Flow:
    sent: int  # datagrams
    received: int
    size: int
    seconds: float  # sending time

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0

    @property
    def offered_kbps(self) -> float:
        return self.sent * self.size * 8 / 1000 / self.seconds

    @property
    def received_kbps(self) -> float:
        return self.received * self.size * 8 / 1000 / self.seconds


def udp_flow(
    src_ns: str, dst_ns: str, dst_addr: str, kbps: int, seconds: float, size: int = 1000
) -> Flow:
    """Send UDP datagrams of ``size`` bytes at ``kbps`` from ``src_ns`` to ``dst_addr`` (in
    ``dst_ns``) for ``seconds``, paced; counts what arrives."""
    port = 9
    received = [0]
    ready = threading.Event()
    done = threading.Event()

    def sink() -> None:
        netns.enter(dst_ns)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((dst_addr, port))
            s.settimeout(0.1)
            ready.set()
            while not done.is_set():
                try:
                    s.recv(65536)
                    received[0] += 1
                except TimeoutError:
                    continue

    def send() -> tuple[int, float]:
        interval = size * 8 / (kbps * 1000)
        payload = b"x" * size
        n = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            t0 = time.monotonic()
            while (now := time.monotonic()) - t0 < seconds:
                due = t0 + n * interval
                if now < due:
                    time.sleep(due - now)
                s.sendto(payload, (dst_addr, port))
                n += 1
            return n, time.monotonic() - t0

    sink_thread = threading.Thread(target=sink, daemon=True)
    sink_thread.start()
    if not ready.wait(10):
        raise RuntimeError("the sink did not start")
    sent, took = netns.run_in(src_ns, send, timeout=seconds + 30)
    time.sleep(0.5)  # let what the shaper and the delay line still hold arrive
    done.set()
    sink_thread.join(5)
    return Flow(sent, received[0], size, took)
