"""A room through each network profile of the test bed (bench/netbed): what aiortc viewers that
decode see behind an impaired link, and what the gateway does about it.

    python -m bench.netbed_run [--seconds 30] [--profiles clean,loss2,...] [--viewers 2]
                               [--leg viewers|anchor|both] [--json out.json]

Per profile a fresh bed: the gateway in its namespace, the stamped 30 fps anchor (--size; x264
ultrafast, constant --kbps, keyframes only when asked) and --viewers viewers in theirs; the profile
on the chosen legs. Printed per profile (viewers' median, worst in brackets): share of time frozen
and freezes (Chromium's rule), glass-to-glass p50/p95, time to first frame, fps and kbps delivered;
from the gateway: NACKs, retransmissions and NACKed packets not resent (too late, repeated, over
budget) per viewer and second, viewers' PLIs per second, keyframes the anchor sent; downstream, the
loss the router applied and the share of packets the tbf shaper dropped; the router's own CPU.
Before the first profile, the router's added round trip on a clean leg (UDP echo). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.netbed import netns
from bench.netbed.bed import NetBed
from bench.netbed.probe import EchoServer, echo
from bench.netbed.profiles import PROFILES, Profile, profile
from bench.netbed.room import BedRoom


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def legs_for(p: Profile, viewers: int, leg: str) -> dict[str, Profile]:
    clean = PROFILES["clean"]
    legs = {"anchor": p if leg in ("anchor", "both") else clean}
    for i in range(1, viewers + 1):
        legs[f"v{i}"] = p if leg in ("viewers", "both") else clean
    return legs


def schedule_rates(bed: NetBed, p: Profile, legs: list[str], seconds: float) -> threading.Event:
    """Apply the profile's rate steps on ``legs`` during the watch; set the event to stop."""
    stop = threading.Event()
    steps = p.rate_schedule(seconds)

    def run() -> None:
        t0 = time.monotonic()
        for at, kbps in steps:
            if stop.wait(max(0.0, t0 + at - time.monotonic())):
                return
            for name in legs:
                bed.set_rate(name, kbps)
            log(f"  t={at:.1f}s rate -> {kbps or 'unlimited'} kbps")

    if steps:
        threading.Thread(target=run, daemon=True).start()
    return stop


def run_profile(
    name: str, args: argparse.Namespace, probe: bool, log_dir: Path | None
) -> dict[str, Any]:
    p = profile(name)
    legs = legs_for(p, args.viewers, args.leg)
    row: dict[str, Any] = {"profile": name, "description": p.description}
    with NetBed(legs, seed=args.seed) as bed:
        if probe:
            with EchoServer(bed):
                local = echo(bed.gateway_ns, 1000)
                through = echo(bed.legs["v1"].ns, 1000)
            row["echo"] = {
                "same_namespace_us": [local.rtt_us_p50, local.rtt_us_p95],
                "through_router_us": [through.rtt_us_p50, through.rtt_us_p95],
            }
            log(f"  UDP echo RTT p50/p95: same namespace {local.rtt_us_p50:.0f}/"
                f"{local.rtt_us_p95:.0f} us, through the router {through.rtt_us_p50:.0f}/"
                f"{through.rtt_us_p95:.0f} us")  # fmt: skip
        room = BedRoom(
            bed, kbps=args.kbps, size=args.size, log_dir=log_dir / name if log_dir else None
        )
        try:
            room.start()
            viewer_legs = [n for n in legs if n != "anchor"]
            impaired = [n for n, lp in legs.items() if lp is p]
            stream0 = room.api(f"/v1/rooms/{room.room}/stream")
            fwd0 = bed.forwarder_stats()
            gw_cpu0 = room.gateway_cpu()
            t0 = time.monotonic()
            stop = schedule_rates(bed, p, impaired, args.seconds)
            try:
                viewers = room.watch(viewer_legs, args.seconds)
            finally:
                stop.set()
            took = time.monotonic() - t0
            stream1 = room.api(f"/v1/rooms/{room.room}/stream")
            fwd1 = bed.forwarder_stats()
            shaped = [bed.shaper_drops(n)["down"] for n in viewer_legs]
            gw_cpu = room.gateway_cpu() - gw_cpu0
            anchor = room.stop_anchor()
        finally:
            room.close()
    row["viewers"] = viewers
    row["anchor"] = anchor
    row["keyframes_in"] = stream1["keyframes_in"] - stream0["keyframes_in"]
    row["keyframe_requests_to_anchor"] = stream1["keyframe_requests"] - stream0["keyframe_requests"]
    row["seconds"] = took
    row["gateway_cpu"] = gw_cpu / took
    row["router_cpu"] = (fwd1["cpu_s"] - fwd0["cpu_s"]) / took
    row["router_late_us"] = [fwd1["late_us_p50"], fwd1["late_us_p95"]]
    down = [fwd1["legs"][n]["down"] for n in viewer_legs]
    down0 = [fwd0["legs"][n]["down"] for n in viewer_legs]
    pk = sum(d["packets"] for d in down) - sum(d["packets"] for d in down0)
    dr = sum(d["dropped"] for d in down) - sum(d["dropped"] for d in down0)
    row["router_packets_per_s"] = sum(
        sum(leg[d]["packets"] for d in ("up", "down")) for leg in fwd1["legs"].values()
    ) / max(took, 1e-9)
    row["applied_loss_down"] = dr / pk if pk else 0.0
    sent, dropped = sum(s for s, _ in shaped), sum(d for _, d in shaped)
    row["shaper_drop_down"] = dropped / (sent + dropped) if sent + dropped else 0.0
    return row


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def spread(values: list[float], spec: str, worst: Callable[[list[float]], float] = max) -> str:
    """median [worst] over viewers."""
    if not values:
        return "-"
    return f"{fmt(_med(values), spec)} [{fmt(worst(values), spec)}]"


COLUMNS = (
    "profile", "frozen %", "freezes", "g2g p50 ms", "g2g p95 ms", "ttff s", "fps", "kbps",
    "NACK/s", "RTX/s", "RTX refused/s", "PLI/s", "anchor IDR", "router loss", "tbf drops",
    "router CPU",
)  # fmt: skip


def cells(row: dict[str, Any]) -> list[str]:
    vs = [v for v in row["viewers"] if "error" not in v]
    secs = row["seconds"]

    def per_s(key: str) -> list[float]:
        return [v["gateway"].get(key, 0) / secs for v in vs]

    g2g50 = [v["g2g_p50_ms"] for v in vs if v["g2g_p50_ms"] is not None]
    g2g95 = [v["g2g_p95_ms"] for v in vs if v["g2g_p95_ms"] is not None]
    ttff = [v["ttff_s"] for v in vs if v["ttff_s"] is not None]
    return [
        row["profile"],
        spread([100 * v["frozen_share"] for v in vs], ".1f"),
        spread([v["freezes"] for v in vs], ".0f"),
        spread(g2g50, ".0f"),
        spread(g2g95, ".0f"),
        spread(ttff, ".2f"),
        spread([v["fps"] for v in vs], ".1f", min),
        spread([v["kbps"] for v in vs], ".0f", min),
        spread(per_s("nacks"), ".1f"),
        spread(per_s("retransmissions"), ".1f"),
        spread(
            [
                sum(v["gateway"].get(k, 0) for k in ("rtx_late", "rtx_repeat", "rtx_over_budget"))
                / secs
                for v in vs
            ],
            ".1f",
        ),
        spread(per_s("keyframe_requests"), ".1f"),
        f"{row['keyframes_in']}",
        f"{100 * row['applied_loss_down']:.1f} %",
        f"{100 * row['shaper_drop_down']:.1f} %",
        f"{100 * row['router_cpu']:.1f} %",
    ]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def git_head() -> str:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netbed_run", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="watch time per profile")
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--viewers", type=int, default=2)
    parser.add_argument("--leg", choices=["viewers", "anchor", "both"], default="viewers")
    parser.add_argument("--kbps", type=int, default=1500, help="the anchor's video bitrate")
    parser.add_argument(
        "--size",
        type=lambda v: tuple(int(x) for x in v.split("x")),
        default=(1280, 720),
        help="the anchor's picture, WxH (640x360 halves the decoders' CPU on a busy machine)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--logs", type=Path, default=None, help="process logs directory")
    args = parser.parse_args(argv)
    reason = netns.why_unavailable()
    if reason is not None:
        print(f"cannot build the test bed here: {reason}", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    for n in names:
        profile(n)  # unknown names fail before anything starts
    rows = []
    load0 = os.getloadavg()[0]
    for i, name in enumerate(names):
        log(f"profile {name} ({args.seconds:.0f} s, {args.viewers} viewers, leg {args.leg})...")
        rows.append(run_profile(name, args, probe=i == 0, log_dir=args.logs))
        log(table(rows[-1:]))
    print(f"commit {git_head()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{args.seconds:.0f} s per profile, {args.viewers} viewers, profile on the "
          f"{args.leg} leg(s), anchor {args.size[0]}x{args.size[1]} at {args.kbps} kbps, "
          f"load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")  # fmt: skip
    if "echo" in rows[0]:
        e = rows[0]["echo"]
        print(f"router: UDP echo RTT p50/p95 {e['through_router_us'][0]:.0f}/"
              f"{e['through_router_us'][1]:.0f} us through it, {e['same_namespace_us'][0]:.0f}/"
              f"{e['same_namespace_us'][1]:.0f} us within one namespace")  # fmt: skip
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=1, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
