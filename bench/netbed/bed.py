"""One test bed: a gateway namespace, one namespace per leg (an anchor or a viewer), and the
impairment router between them. Everything it creates is torn down on exit, failures included;
namespaces a killed run left behind are swept when the next bed starts.

Addresses come from 198.18.0.0/15 (the benchmarking range) and exist only inside the bed's
namespaces: the gateway is 198.18.0.1 (on its loopback, so it is its only ICE address), leg ``i``
is 198.18.i.2. Each leg is a pair of TUN devices, ``gw_tun`` in the gateway's namespace and
``ep_tun`` in the leg's; the forwarder copies packets between them through the leg's profile.
Bandwidth limits are tbf qdiscs on both TUN devices (each shapes what leaves through it).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bench.netbed import netns
from bench.netbed.profiles import Profile

GATEWAY_ADDRESS = "198.18.0.1"
TBF_LATENCY_MS = 100
"""Queue a tbf holds before it tail-drops (a modest bottleneck buffer)."""

_counter = itertools.count(1)
_SENT = re.compile(r"Sent \d+ bytes (\d+) pkt \(dropped (\d+)")


@dataclass(frozen=True, slots=True)
class Leg:
    name: str
    index: int
    ns: str
    gw_tun: str
    ep_tun: str
    profile: Profile

    @property
    def address(self) -> str:
        return f"198.18.{self.index}.2"


def tbf_args(kbps: int) -> list[str]:
    burst = max(4000, kbps * 1000 // 8 // 50)  # 20 ms of the rate, at least ~3 packets
    return ["tbf", "rate", f"{kbps}kbit", "burst", str(burst), "latency", f"{TBF_LATENCY_MS}ms"]


class NetBed:
    """``with NetBed({"anchor": clean, "v1": profile("loss2")}) as bed:`` ..."""

    def __init__(self, legs: Mapping[str, Profile], *, seed: int = 1) -> None:
        if not 1 <= len(legs) <= 250:
            raise ValueError("a bed has 1..250 legs")
        n = next(_counter)
        self.base = f"{netns.PREFIX}{os.getpid()}x{n}"
        self.gateway_ns = f"{self.base}-gw"
        tag = f"n{os.getpid():x}x{n}"
        self.legs: dict[str, Leg] = {
            name: Leg(name, i, f"{self.base}-{name}", f"{tag}g{i}", f"{tag}e{i}", prof)
            for i, (name, prof) in enumerate(legs.items(), start=1)
        }
        self.seed = seed
        self._forwarder: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[Any]] = []
        self._made: list[str] = []
        self.rates: dict[str, int | None] = {}

    # -- life ---------------------------------------------------------------------------------
    def __enter__(self) -> NetBed:
        netns.require()
        netns.sweep_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _build(self) -> None:
        for name in (self.gateway_ns, *(leg.ns for leg in self.legs.values())):
            self._made.append(name)
            netns.add(name)
        netns.ip("-n", self.gateway_ns, "addr", "add", f"{GATEWAY_ADDRESS}/32", "dev", "lo")
        config = {
            "seed": self.seed,
            "legs": [
                {
                    "name": leg.name,
                    "gw_tun": leg.gw_tun,
                    "ep_tun": leg.ep_tun,
                    "up": leg.profile.up.to_dict(),
                    "down": leg.profile.down.to_dict(),
                }
                for leg in self.legs.values()
            ],
        }
        self._forwarder = subprocess.Popen(
            [sys.executable, "-m", "bench.netbed.forwarder", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._forwarder.stdout is not None
        line = _readline(self._forwarder.stdout, 15.0)
        if line.strip() != "ready":
            raise RuntimeError(f"the forwarder did not start: {line!r}")
        gw = self.gateway_ns
        for leg in self.legs.values():
            netns.ip("link", "set", leg.gw_tun, "netns", gw)
            netns.ip("link", "set", leg.ep_tun, "netns", leg.ns)
            netns.ip("-n", gw, "link", "set", leg.gw_tun, "up")
            netns.ip(
                "-n", gw, "route", "add", f"198.18.{leg.index}.0/24",
                "dev", leg.gw_tun, "src", GATEWAY_ADDRESS,
            )  # fmt: skip
            netns.ip("-n", leg.ns, "addr", "add", f"{leg.address}/32", "dev", leg.ep_tun)
            netns.ip("-n", leg.ns, "link", "set", leg.ep_tun, "up")
            netns.ip("-n", leg.ns, "route", "add", "198.18.0.0/15", "dev", leg.ep_tun)
            self.set_rate(leg.name, leg.profile.rate_kbps)

    def close(self) -> None:
        """Stop every process the bed started, then the forwarder (its TUN devices go with it),
        then delete the namespaces. Safe to call twice."""
        procs, self._procs = self._procs, []
        for proc in procs:
            _stop(proc)
        fwd, self._forwarder = self._forwarder, None
        if fwd is not None:
            _stop(fwd)
        made, self._made = self._made, []
        for name in made:
            netns.delete(name)

    # -- use ----------------------------------------------------------------------------------
    def set_rate(self, leg_name: str, kbps: int | None) -> None:
        """tbf at ``kbps`` on both directions of a leg (None: unlimited)."""
        leg = self.legs[leg_name]
        for ns, dev in ((self.gateway_ns, leg.gw_tun), (leg.ns, leg.ep_tun)):
            if kbps is None:
                if self.rates.get(leg_name) is not None:
                    _tc(ns, "qdisc", "del", "dev", dev, "root")
            else:
                _tc(ns, "qdisc", "replace", "dev", dev, "root", *tbf_args(kbps))
        self.rates[leg_name] = kbps

    def qdisc_stats(self, leg_name: str) -> dict[str, str]:
        """``tc -s qdisc`` of the leg's two devices (down: gateway side, up: endpoint side)."""
        leg = self.legs[leg_name]
        return {
            "down": _tc(self.gateway_ns, "-s", "qdisc", "show", "dev", leg.gw_tun),
            "up": _tc(leg.ns, "-s", "qdisc", "show", "dev", leg.ep_tun),
        }

    def shaper_drops(self, leg_name: str) -> dict[str, tuple[int, int]]:
        """(packets sent, packets dropped) by the leg's tbf, per direction ((0, 0) unshaped)."""
        out = {}
        for direction, text in self.qdisc_stats(leg_name).items():
            m = _SENT.search(text)
            out[direction] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        return out

    def forwarder_stats(self) -> dict[str, Any]:
        fwd = self._forwarder
        if fwd is None or fwd.stdin is None or fwd.stdout is None:
            raise RuntimeError("the bed is not running")
        with self._lock:
            fwd.stdin.write("stats\n")
            fwd.stdin.flush()
            stats: dict[str, Any] = json.loads(_readline(fwd.stdout, 10.0))
        stats["pid"] = fwd.pid
        return stats

    def popen(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` inside namespace ``ns``; stopped (terminate, kill) when the bed closes."""
        proc = subprocess.Popen(
            netns.exec_argv(ns, list(argv)),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._procs.append(proc)
        return proc

    def namespaces(self) -> list[str]:
        return [self.gateway_ns, *(leg.ns for leg in self.legs.values())]


def _tc(ns: str, *args: str) -> str:
    done = subprocess.run(
        netns.exec_argv(ns, ["tc", *args]), capture_output=True, text=True, timeout=10
    )
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} in {ns}: {done.stderr.strip()}")
    return done.stdout


def _readline(stream: IO[str], timeout: float) -> str:
    """One line from a child's pipe, or TimeoutError."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        raise TimeoutError("no line from the child in time")
    return box[0]


def _stop(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """terminate -> wait -> kill -> reap; closes its pipes."""
    if proc.poll() is None:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
