"""Room message delivery latency to N WebSocket subscribers through an edge.

Processes: a redis-server, an origin (``stagecast serve``) and an edge (``stagecast relay``)
sharing it (the message bus is Redis pub/sub), each a child process. This process holds the
subscribers (N sockets on the edge, or on the origin with ``--target origin``) and one sender
(an anchor on the origin) that sends ``--messages`` chat lines at ``--rate`` per second; each
line's latency is its arrival at a subscriber minus its send time (one clock: this process).

    python -m bench.messages --subscribers 200 --messages 100 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
from websockets.asyncio.client import ClientConnection, connect

from gateway.launcher import free_port, free_udp_port, stop_process, wait_healthy
from relay.auth.tokens import TokenAuthority

SECRET = "bench-messages-secret-" + "s" * 32
KEY = "bench-messages-operator-key"


@contextmanager
def child(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env}
    )
    try:
        yield proc
    finally:
        stop_process(proc)


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    times = psutil.Process(proc.pid).cpu_times()
    return float(times.user + times.system)


@contextmanager
def cluster() -> Iterator[tuple[str, str, dict[str, subprocess.Popen[bytes]]]]:
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server is not installed")
    rport, oport, eport = free_port(), free_port(), free_port()
    udp = free_udp_port()
    redis_url = f"redis://127.0.0.1:{rport}/0"
    env = {
        "STAGECAST_AUTH__TOKEN_SECRET": SECRET,
        "STAGECAST_API__OPERATOR_KEY": KEY,
        "STAGECAST_CLUSTER__REDIS_URL": redis_url,
        "STAGECAST_MESSAGES__CHAT_PER_SECOND": "1000",
        "STAGECAST_MESSAGES__CHAT_BURST": "1000",
        "STAGECAST_MESSAGES__QUEUE_SIZE": "10000",
        "STAGECAST_LOG_LEVEL": "warning",
    }
    py = sys.executable
    upstream = f"http://127.0.0.1:{oport}"
    relay = [py, "-m", "gateway.cli", "relay", "--port", str(eport), "--node-id", "edge"]
    relay += ["--udp-port", str(free_udp_port())]  # two nodes on one host: a UDP port each
    relay += ["--workers", "1"]  # one process (a relay's default is one per core)
    relay += ["--upstream", upstream, "--redis-url", redis_url]
    with (
        child([redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--save", ""], {}),
        child(
            [py, "-m", "gateway.cli", "serve", "--port", str(oport), "--udp-port", str(udp)],
            {**env, "STAGECAST_CLUSTER__NODE_ID": "origin"},
        ) as origin_proc,
        child(
            relay,
            env,
        ) as edge_proc,
    ):
        origin, edge = f"http://127.0.0.1:{oport}", f"http://127.0.0.1:{eport}"
        wait_healthy(origin)
        wait_healthy(edge)
        yield origin, edge, {"origin": origin_proc, "edge": edge_proc}


def ws(base: str, room: str, token: str) -> str:
    return base.replace("http://", "ws://") + f"/rooms/{room}/messages?access_token={token}"


async def run(subscribers: int, messages: int, rate: float, target: str) -> dict[str, object]:
    tokens = TokenAuthority(SECRET)
    room = "bench"
    with cluster() as (origin, edge, procs):
        base = edge if target == "edge" else origin
        sent: dict[int, float] = {}
        latencies: list[float] = []
        received = [0] * subscribers
        socks: list[ClientConnection] = []
        for i in range(subscribers):
            token = tokens.mint(room, "audience", f"sub-{i}", 3600)
            sock = await connect(ws(base, room, token), open_timeout=20, max_queue=None)
            await sock.recv()  # welcome
            socks.append(sock)

        async def listen(i: int, sock: ClientConnection) -> None:
            while received[i] < messages:
                msg = json.loads(await sock.recv())
                if msg.get("type") != "chat":
                    continue
                latencies.append(time.perf_counter() - sent[int(msg["text"])])
                received[i] += 1

        listeners = [asyncio.create_task(listen(i, s)) for i, s in enumerate(socks)]
        anchor = tokens.mint(room, "anchor", "sender", 3600)
        async with connect(ws(origin, room, anchor)) as sender:
            await sender.recv()
            await asyncio.sleep(1.0)  # every subscription settled
            cpu0 = {name: cpu_seconds(p) for name, p in procs.items()}
            for seq in range(messages):
                sent[seq] = time.perf_counter()
                await sender.send(json.dumps({"type": "chat", "text": str(seq)}))
                await asyncio.sleep(1 / rate)
            _, pending = await asyncio.wait(listeners, timeout=10)
            for task in pending:
                task.cancel()
            cpu = {name: cpu_seconds(p) - cpu0[name] for name, p in procs.items()}
        for sock in socks:
            await sock.close()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "target": target,
        "subscribers": subscribers,
        "messages": messages,
        "rate_per_s": rate,
        "delivered_pct": round(100 * len(latencies) / (subscribers * messages), 2),
        "p50_ms": round(q[49] * 1000, 2),
        "p95_ms": round(q[94] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        # server CPU per delivered message (the serving node's, and the other node's)
        "cpu_us_per_delivery": {
            name: round(1e6 * seconds / max(1, len(latencies)), 1) for name, seconds in cpu.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--target", choices=["edge", "origin"], default="edge")
    args = parser.parse_args()
    result = asyncio.run(run(args.subscribers, args.messages, args.rate, args.target))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
