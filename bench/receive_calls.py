"""Python function calls per received anchor packet in a running node: a CPU figure the load of
a shared machine does not move (issue 20).

On a 2-core machine at load 15-35 a node's CPU per packet varies by more than a change to the
receive path saves (BENCHMARKS.md, ``bench.idle``), and this VM has no hardware counters for
``perf stat``. Calls counted by cProfile do not depend on the load: for each tree (``--tree``),
two ``stagecast serve`` processes under ``python -m cProfile``, each with its own ffmpeg WHIP
anchor (``bench.peer``'s source), one stopped (SIGINT) after ``--short`` seconds and one after
``--seconds``; the difference of their call counts over the difference of their RTP packets
(the anchor's ``packets_received`` from the operator API just before the stop: the C lanes of
the receive path take most packets without a Python call to count) is the steady state's calls
per packet, start-up taken out. Every
Python function and C builtin called counts one (cProfile's unit); the per-frame and periodic
work of those seconds is spread over the packets. ``--top N`` lists the N functions called most
per packet.

    python -m bench.receive_calls --tree BASE --tree .
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import imageio_ffmpeg

from bench.fanout import ROOM, SECRET
from bench.peer import Source, whip_source_argv
from gateway.launcher import free_port, free_udp_port
from relay.auth.tokens import TokenAuthority

OPERATOR_KEY = "receive-calls-bench-operator-key"


def start(
    tree: Path, profile: Path
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int]:
    port, udp = free_port(), free_udp_port()
    env = dict(
        os.environ,
        STAGECAST_AUTH__TOKEN_SECRET=SECRET,
        STAGECAST_API__OPERATOR_KEY=OPERATOR_KEY,
        STAGECAST_LOG_LEVEL="warning",
        PYTHONPATH=str(tree),
    )
    argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "gateway.cli", "serve"]
    argv += ["--port", str(port), "--udp-port", str(udp)]
    quiet = subprocess.DEVNULL
    node = subprocess.Popen(argv, cwd=tree, env=env, stdout=quiet, stderr=quiet)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or node.poll() is not None:
                node.kill()
                raise RuntimeError(f"{tree}: the node did not start") from None
            time.sleep(0.5)
    token = TokenAuthority(SECRET).mint(ROOM, "anchor", "bench", 3600)
    url = f"http://127.0.0.1:{port}/whip/{ROOM}"
    source = whip_source_argv(imageio_ffmpeg.get_ffmpeg_exe(), Source(), url, token)
    anchor = subprocess.Popen(source, stdout=quiet, stderr=quiet)
    return node, anchor, port


def packets_received(port: int) -> int:
    """The room's anchors' RTP packets so far, as the node counts them (0: no answer)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/rooms/{ROOM}/anchors", headers={"X-API-Key": OPERATOR_KEY}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return sum(int(a["packets_received"]) for a in json.load(answer))
    except (OSError, ValueError, KeyError):
        return 0


def stop(node: subprocess.Popen[bytes], anchor: subprocess.Popen[bytes]) -> None:
    anchor.terminate()
    anchor.wait(10)
    node.send_signal(signal.SIGINT)  # uvicorn shuts down; cProfile writes its file on exit
    node.wait(60)


def counts(profile: Path, packets: int) -> tuple[dict[tuple[str, int, str], int], int]:
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    return {key: value[1] for key, value in stats.items()}, packets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--short", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="receive-calls-") as tmp:
        runs = []
        for tree in args.tree:
            for seconds in (args.short, args.seconds):
                profile = Path(tmp) / f"{tree.resolve().name}-{seconds:g}.prof"
                runs.append((tree, seconds, profile, *start(tree.resolve(), profile)))
        began = time.monotonic()
        received: dict[Path, int] = {}
        for _, seconds, profile, node, anchor, port in sorted(runs, key=lambda r: r[1]):
            time.sleep(max(0.0, began + seconds - time.monotonic()))
            received[profile] = packets_received(port)
            stop(node, anchor)
        for tree in args.tree:
            short, long = (counts(r[2], received[r[2]]) for r in runs if r[0] == tree)
            packets = long[1] - short[1]
            if packets <= 0:  # the anchor of the long run did not get going
                print(
                    f"{tree}: packets {short[1]} after {args.short:g} s, {long[1]} after "
                    f"{args.seconds:g} s: no steady state to count"
                )
                continue
            total = sum(long[0].values()) - sum(short[0].values())
            print(f"{tree}: {total / packets:.1f} calls per packet ({packets} packets)")
            per = {k: (n - short[0].get(k, 0)) / packets for k, n in long[0].items()}
            for key, n in sorted(per.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"  {n:5.2f} {Path(key[0]).name}:{key[1]}:{key[2]}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
