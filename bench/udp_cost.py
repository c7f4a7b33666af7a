"""What one UDP send costs the sending core on this machine's loopback, and how much of it is the
receiver's work that loopback bills to the sender.

On loopback the receiver's half of the path (IP and UDP delivery, queueing on its socket, and
waking its process on the other core, which in a VM is an inter-processor interrupt) runs inside
the sender's ``sendto``. Over a real NIC that half runs on the viewer's machine. This times the
sender's thread CPU for 1200-byte datagrams sent one per call, and as UDP GSO sends of several
segments, to a receiver on another core that either sleeps in ``recv`` (as every real client
does) or polls (never needs a wake-up), so the gateway's per-viewer figures can be read against
the floor the kernel sets here.

    python -m bench.udp_cost
    python -m bench.udp_cost --segments 6 --sends 20000
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import time

UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
SIZE = 1200


def receive(port: int, poll: bool, cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(not poll)
    while True:
        try:
            if sock.recv(65536) == b"x":
                return
        except BlockingIOError:
            continue


def measure(port: int, mode: str, sends: int, segments: int) -> float:
    """Sender thread CPU per datagram, in microseconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    addr = ("127.0.0.1", port)
    one = bytes(SIZE)
    run = bytes(SIZE * segments)
    cmsg = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", SIZE))]
    start = time.thread_time()
    for i in range(sends):
        try:
            if mode == "gso":
                sock.sendmsg([run], cmsg, 0, addr)
            else:
                sock.sendto(one, addr)
        except BlockingIOError:
            pass
        if i % 50 == 0:
            time.sleep(0.001)  # let the receiver drain: no buffer overflows
    cpu = time.thread_time() - start
    datagrams = sends * (segments if mode == "gso" else 1)
    return cpu / datagrams * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sends", type=int, default=20000)
    parser.add_argument("--segments", type=int, default=6, help="datagrams per GSO send")
    parser.add_argument("--sender-cpu", type=int, default=0)
    parser.add_argument("--receiver-cpu", type=int, default=1)
    parser.add_argument("receiver", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:  # child: python -m bench.udp_cost PORT poll|sleep
        receive(int(args.receiver[0]), args.receiver[1] == "poll", args.receiver_cpu)
        return
    os.sched_setaffinity(0, {args.sender_cpu})
    print(f"| receiver | {SIZE} B datagram per sendto | in {args.segments}-segment GSO sends |")
    print("|---|---|---|")
    for kind in ("sleep", "poll"):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        argv = [sys.executable, "-m", "bench.udp_cost", str(port), kind]
        child = subprocess.Popen([*argv, "--receiver-cpu", str(args.receiver_cpu)])
        time.sleep(0.5)
        try:
            single = min(measure(port, "sendto", args.sends, 1) for _ in range(2))
            gso = min(measure(port, "gso", args.sends, args.segments) for _ in range(2))
        finally:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", port))
            child.wait(10)
        print(f"| {kind}s | {single:.2f} us | {gso:.2f} us per datagram |", flush=True)


if __name__ == "__main__":
    main()
