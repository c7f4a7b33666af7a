"""How fast a Chromium anchor reaches 720p and its configured bitrate, with the gateway's
transport-cc feedback (``twcc``) and without it (``remb``: aiortc's receive-side REMB only, as
before issue 17), and where it settles behind an impaired uplink.

    python -m bench.anchor_ramp [--seconds 12] [--runs 2] [--modes remb,twcc,twcc/nack1]
                                [--pages full,early] [--simulcast]
                                [--profiles loopback,clean,1mbps,loss2] [--json out.json]
                                [--tree /work/wt/base --tree .]

Per run: a fresh gateway, a headless Chromium (fake 1280x720 camera and microphone) publishing
from the publish page at quality 720 (maxBitrate 2.5 Mbit/s); its outbound-rtp stats sampled
every 0.2 s from the moment the page says live. ``loopback``: everything on 127.0.0.1.
Any other profile (bench/netbed, needs root): the gateway in its namespace, the anchor behind the
profile, a decoding viewer (bench.netbed.peer) on a clean leg counting freezes.
``--pages``: ``full`` is the publish page as it is (its encoder keeps the resolution until it
has sent frames at the estimated rate), ``early`` without that (as before): Chromium then
scales its first frames down.
``--tree``: run the gateway from each of these checkouts (their own .venv) in turn, e.g. main
before a change and the change (the publisher and the bed always run from this checkout).
Runs of every tree, mode and page alternate, so each comparison shares the machine's load.

Printed per run: seconds until the picture is 720p, until Chromium's target bitrate is 90 % of
its maximum, until it sends 80 % of it (over 0.5 s); the send rate at 3 s and over the last half
of the run; its bandwidth estimate (availableOutgoingBitrate); NACKs it received and packets it
resent; and for netbed profiles the packets the router dropped upstream (while the viewer
watched), those the anchor's tbf dropped (whole run), those the gateway never got (lost after
NACK, whole run), and the viewer's share of time frozen and freezes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.launcher import free_udp_port

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MAX_BITRATE = 2_500_000  # the publish page's 720p maxBitrate
SAMPLE = 0.2
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
STATS_JS = """async () => {
  const pc = window.stagecast && window.stagecast.pc;
  if (!pc) return null;
  const out = {w: 0, h: 0, bytes: 0, target: 0, fps: 0, avail: null, nacks: 0,
               resent: 0, packets: 0, limit: null, plis: 0, keyframes: 0};
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.w = Math.max(out.w, s.frameWidth || 0);
      out.h = Math.max(out.h, s.frameHeight || 0);
      out.bytes += (s.bytesSent || 0) + (s.headerBytesSent || 0);
      out.target += s.targetBitrate || 0;
      out.fps = Math.max(out.fps, s.framesPerSecond || 0);
      out.nacks += s.nackCount || 0;
      out.resent += s.retransmittedPacketsSent || 0;
      out.packets += s.packetsSent || 0;
      out.limit = s.qualityLimitationReason || out.limit;
      out.plis += s.pliCount || 0;
      out.keyframes += s.keyFramesEncoded || 0;
    }
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded'
        && s.availableOutgoingBitrate !== undefined) out.avail = s.availableOutgoingBitrate;
  });
  return out;
}"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the publisher (a child process, in the anchor's namespace for netbed profiles) -------------
def busy_camera(path: Path, seconds: int = 6) -> Path:
    """A 1280x720 30 fps MJPEG clip with moving detail (ffmpeg's testsrc2) for Chromium's camera:
    its built-in pattern is so simple that the encoder sends ~400 kbit/s at 720p whatever it
    may send, which hides the bitrate ramp."""
    if not path.exists():
        import imageio_ffmpeg

        subprocess.run(
            [
                imageio_ffmpeg.get_ffmpeg_exe(),
                *("-hide_banner", "-loglevel", "error", "-y"),
                *("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30"),
                *("-t", str(seconds), "-q:v", "4", str(path)),
            ],
            check=True,
            timeout=120,
        )
    return path


async def publisher(url: str, seconds: float, camera: str | None, page_kind: str = "full") -> None:
    """Publish from the page at ``url``; print one JSON line per stats sample, then ``done``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        origin = "/".join(url.split("/")[:3])  # the bed's gateway is not localhost: camera
        args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"]
        if camera:
            args.append(f"--use-file-for-fake-video-capture={camera}")
        args += os.environ.get("ANCHOR_RAMP_CHROMIUM_ARGS", "").split()  # e.g. logging
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args, timeout=30_000)
        try:
            page = await (await browser.new_context()).new_page()
            if page_kind == "early":
                await page.add_init_script("window.stagecastOptions = {fullSizeStart: false};")
            await page.goto(url)
            ready = "window.stagecast.stream && !document.querySelector('#go').disabled"
            await _until(page, ready, 20)
            await page.click("#go")
            await _until(page, "window.stagecast.state === 'live'", 20)
            t0 = time.monotonic()
            print(json.dumps({"live": True}), flush=True)
            while (now := time.monotonic() - t0) < seconds:
                sample = await page.evaluate(STATS_JS)
                if sample is not None:
                    sample["t"] = round(now, 3)
                    print(json.dumps(sample), flush=True)
                await asyncio.sleep(max(0.0, SAMPLE - (time.monotonic() - t0 - now)))
            await page.click("#stop")
        finally:
            await browser.close()
    print(json.dumps({"done": True}), flush=True)


async def _until(page: Any, expression: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await page.evaluate(expression):
        if time.monotonic() > deadline:
            state = await page.evaluate("JSON.stringify(window.stagecast || null)")
            raise TimeoutError(f"timed out waiting for {expression}: {state}")
        await asyncio.sleep(0.1)


def read_samples(proc: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    samples: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        item = json.loads(line)
        if item.get("done"):
            break
        if "t" in item:
            samples.append(item)
        if time.monotonic() > deadline:
            break
    return samples


# -- figures ------------------------------------------------------------------------------------
def rates(samples: list[dict[str, Any]], window: float = 0.5) -> list[tuple[float, float]]:
    """(t, bits per second over the ``window`` before t)."""
    out = []
    for i, s in enumerate(samples):
        j = i
        while j > 0 and s["t"] - samples[j - 1]["t"] <= window + 1e-6:
            j -= 1
        if j < i:
            dt = s["t"] - samples[j]["t"]
            out.append((s["t"], (s["bytes"] - samples[j]["bytes"]) * 8 / dt))
    return out


def first(samples: list[tuple[float, float]] | list[dict[str, Any]], pred: Any) -> float | None:
    for s in samples:
        if pred(s):
            return float(s[0] if isinstance(s, tuple) else s["t"])
    return None


def figures(samples: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    r = rates(samples)
    late = [b for t, b in r if t >= seconds / 2]
    at3 = [b for t, b in r if 2.5 <= t <= 3.5]
    avail = [s["avail"] for s in samples if s["t"] >= seconds / 2 and s["avail"] is not None]
    last = samples[-1] if samples else {}
    return {
        "t_720p": first(samples, lambda s: s["w"] >= 1280),
        "t_target90": first(samples, lambda s: s["target"] >= 0.9 * MAX_BITRATE),
        "t_send80": first(r, lambda x: x[1] >= 0.8 * MAX_BITRATE),
        "kbps_at_3s": round(statistics.mean(at3) / 1000) if at3 else None,
        "kbps_late": round(statistics.mean(late) / 1000) if late else None,
        "estimate_kbps_late": round(statistics.mean(avail) / 1000) if avail else None,
        "height_late": last.get("h"),
        "fps_late": last.get("fps"),
        "nacks": last.get("nacks"),
        "resent": last.get("resent"),
        "packets": last.get("packets"),
        "limit": last.get("limit"),
        "plis": last.get("plis"),
        "keyframes": last.get("keyframes"),
    }


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 1 else f"{value:.1f}"
    return str(value)


# -- runs ---------------------------------------------------------------------------------------
START_KBPS: int | None = None  # --start-kbps: the gateway's media.anchor_start_kbps


def gateway_env(mode: str) -> dict[str, str]:
    """``mode``: ``remb`` or ``twcc``, with ``/nackN`` the gateway's media.anchor_nack_tries
    (``twcc/nack1``: aiortc's own NACKs, once per gap)."""
    mode, _, nack = mode.partition("/nack")
    env = {"STAGECAST_MEDIA__ANCHOR_TRANSPORT_CC": "true" if mode == "twcc" else "false"}
    if nack:
        env["STAGECAST_MEDIA__ANCHOR_NACK_TRIES"] = nack
    if START_KBPS is not None:
        env["STAGECAST_MEDIA__ANCHOR_START_KBPS"] = str(START_KBPS)
        env["STAGECAST_MEDIA__ANCHOR_CC_START_KBPS"] = str(START_KBPS)
    return env


SIMULCAST = False  # --simulcast: the page's three layers (figures: the largest picture sent)


def publish_url(base: str, room: str, token: str) -> str:
    layers = "" if SIMULCAST else "&simulcast=0"  # one layer unless --simulcast
    return f"{base}/publish?room={room}&quality=720{layers}#token={token}"


CAMERA: Path | None = None  # --camera busy: the clip Chromium's fake camera plays


def publisher_argv(url: str, seconds: float, page: str = "full") -> list[str]:
    argv = [sys.executable, "-m", "bench.anchor_ramp", "--publisher", url]
    argv += ["--seconds", str(seconds), "--page", page]
    return [*argv, "--camera-file", str(CAMERA)] if CAMERA else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_python(tree: Path | None) -> tuple[str, Path]:
    """The interpreter and checkout to run the gateway from."""
    if tree is None:
        return sys.executable, ROOT
    return str(tree / ".venv" / "bin" / "python"), tree


def run_loopback(
    mode: str, seconds: float, page: str = "full", tree: Path | None = None
) -> dict[str, Any]:
    import httpx

    from relay.auth.tokens import TokenAuthority

    secret = "anchor-ramp-secret-" + "r" * 32
    port = free_port()
    python, gw_root = gateway_python(tree)
    env = {
        **os.environ,
        "PYTHONPATH": str(gw_root),
        "STAGECAST_HOST": "127.0.0.1",
        "STAGECAST_PORT": str(port),
        "STAGECAST_AUTH__TOKEN_SECRET": secret,
        "STAGECAST_LOG_LEVEL": "warning",
        "STAGECAST_WEBRTC__ADDRESSES": '["127.0.0.1"]',
        "STAGECAST_WEBRTC__UDP_PORT": str(free_udp_port()),  # not the default 8443
        "STAGECAST_LIMITS__MAX_LOOP_BUSY": "1.0",
        **gateway_env(mode),
    }
    gw = subprocess.Popen(
        [python, "-m", "gateway.cli", "serve"],
        env=env,
        cwd=gw_root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # its banner
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # a loaded machine
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or gw.poll() is not None:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.2)
        token = TokenAuthority(secret).mint("ramp", "anchor", "bench-anchor", 3600)
        pub = subprocess.Popen(
            publisher_argv(publish_url(base, "ramp", token), seconds, page),
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            samples = read_samples(pub, seconds + 60)
        finally:
            pub.wait(30)
    finally:
        gw.terminate()
        gw.wait(15)
    return {"samples": samples, **figures(samples, seconds)}


def run_netbed(
    mode: str, profile_name: str, seconds: float, page: str = "full", tree: Path | None = None
) -> dict[str, Any]:
    from bench.netbed.bed import NetBed
    from bench.netbed.profiles import PROFILES, profile
    from bench.netbed.room import BedRoom

    legs = {"anchor": profile(profile_name), "v1": PROFILES["clean"]}
    with NetBed(legs) as bed:
        room = BedRoom(bed, gateway_env=gateway_env(mode), gateway_tree=tree)
        try:
            room.start_gateway(timeout=90)  # a loaded machine
            url = publish_url(room.base_url, room.room, room.anchor_token())
            # the viewer starts once the room is live and watches for ``seconds``
            # runs until stopped below, once the viewer is done
            pub = bed.popen(bed.legs["anchor"].ns, publisher_argv(url, seconds + 120, page))
            room.wait_live(30)
            before = bed.forwarder_stats()["legs"]["anchor"]["up"]
            viewers = room.watch(["v1"], seconds)
            anchors = room.api(f"/v1/rooms/{room.room}/anchors")
            after = bed.forwarder_stats()["legs"]["anchor"]["up"]
            shaped = bed.shaper_drops("anchor")["up"]
            pub.terminate()
            samples = read_samples(pub, 30)
        finally:
            room.close()
    viewer = viewers[0]
    anchor = anchors[0] if anchors else {}
    return {
        "samples": samples,
        **figures(samples, seconds),
        "router_dropped_up": after["dropped"] - before["dropped"],
        "tbf_dropped_up": shaped[1],  # the whole run, the ramp included
        "router_packets_up": after["packets"] - before["packets"],
        "gateway_lost": anchor.get("packets_lost"),
        "gateway_video_lost": anchor.get("video_packets_lost"),
        "gateway_received": anchor.get("packets_received"),
        "feedback_sent": anchor.get("feedback_packets_sent"),
        "gw_nacked": anchor.get("nacked_packets"),
        "gw_renacked": anchor.get("renacked_packets"),
        "gw_recovered": anchor.get("nack_recovered"),
        "gw_recovered_rep": anchor.get("nack_recovered_after_repeat"),
        "gw_given_up": anchor.get("nack_given_up"),
        "gw_late": anchor.get("nack_late"),
        "gw_wait_ms": anchor.get("repair_wait_ms"),
        "gw_repair_ms": anchor.get("repair_time_ms"),
        "gw_frames_skipped": anchor.get("frames_skipped"),
        "viewer_frozen": viewer.get("frozen_share"),
        "viewer_freezes": viewer.get("freezes"),
        "viewer_frames": viewer.get("frames"),
    }


COLUMNS = [
    ("t_720p", "720p s"),
    ("t_target90", "target90 s"),
    ("t_send80", "send80 s"),
    ("kbps_at_3s", "kbps@3s"),
    ("kbps_late", "kbps late"),
    ("estimate_kbps_late", "est kbps"),
    ("height_late", "height"),
    ("packets", "video pkts"),
    ("plis", "plis"),
    ("nacks", "nacks"),
    ("resent", "resent"),
    ("router_dropped_up", "lost up"),
    ("tbf_dropped_up", "tbf drop"),
    ("gateway_lost", "unrecov"),
    ("gateway_video_lost", "unrecov video"),
    ("gw_nacked", "gw nacked"),
    ("gw_renacked", "gw re-nacked"),
    ("gw_recovered", "gw recovered"),
    ("gw_recovered_rep", "after repeat"),
    ("gw_given_up", "given up"),
    ("gw_late", "late"),
    ("gw_wait_ms", "wait ms"),
    ("gw_repair_ms", "repair ms"),
    ("gw_frames_skipped", "skipped frames"),
    ("viewer_frozen", "frozen"),
    ("viewer_freezes", "freezes"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--modes", default="remb,twcc")
    ap.add_argument("--pages", default="full", help="full,early: see above")
    ap.add_argument("--simulcast", action="store_true", help="the page's 3 layers")
    ap.add_argument("--profiles", default="loopback")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--tree", type=Path, action="append", help="checkout to run the gateway from (repeat)"
    )
    ap.add_argument(
        "--start-kbps", type=int, help="the gateway's anchor_start_kbps and anchor_cc_start_kbps"
    )
    ap.add_argument(
        "--camera",
        choices=("pattern", "busy"),
        default="busy",
        help="Chromium's own fake pattern, or a detailed noisy clip (default)",
    )
    ap.add_argument("--publisher", help=argparse.SUPPRESS)
    ap.add_argument("--camera-file", help=argparse.SUPPRESS)
    ap.add_argument("--page", default="full", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.publisher:
        asyncio.run(publisher(args.publisher, args.seconds, args.camera_file, args.page))
        return 0
    global START_KBPS, CAMERA, SIMULCAST
    START_KBPS = args.start_kbps
    SIMULCAST = args.simulcast
    if args.camera == "busy":
        CAMERA = busy_camera(Path(tempfile.gettempdir()) / "stagecast-anchor-ramp-720p.mjpeg")
    results: list[dict[str, Any]] = []
    head = ["profile", "tree", "mode", "page", "load", *(title for _, title in COLUMNS)]
    print(" | ".join(head), flush=True)
    trees: list[Path | None] = [t.resolve() for t in args.tree] if args.tree else [None]
    variants = [
        (t, m, p) for t in trees for m in args.modes.split(",") for p in args.pages.split(",")
    ]
    for prof in args.profiles.split(","):
        for _ in range(args.runs):  # interleaved: every variant once per round
            for tree, mode, page in variants:
                load = Path("/proc/loadavg").read_text().split()[0]
                if prof == "loopback":
                    result = run_loopback(mode, args.seconds, page, tree)
                else:
                    result = run_netbed(mode, prof, args.seconds, page, tree)
                name = tree.name if tree is not None else "."
                result.update(
                    profile=prof, tree=name, mode=mode, page=page, load=load, seconds=args.seconds
                )
                results.append(result)
                cells = [prof, name, mode, page, load, *(fmt(result.get(k)) for k, _ in COLUMNS)]
                print(" | ".join(cells), flush=True)
    summary(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def summary(results: list[dict[str, Any]]) -> None:
    """Per profile, mode and page: time to 720p and to 90 % of the target, p50 and max (a run
    that never got there counts as the run's length, marked with >)."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["profile"], r["tree"], r["mode"], r["page"]), []).append(r)
    print("profile | tree | mode | page | runs | 720p p50 | 720p max | target90 p50 | target90 max")
    for (prof, tree, mode, page), rows in groups.items():
        cells = [prof, tree, mode, page, str(len(rows))]
        for key in ("t_720p", "t_target90"):
            values = [r[key] for r in rows]
            missing = any(v is None for v in values)
            got = sorted(v if v is not None else float("inf") for v in values)
            p50 = got[(len(got) - 1) // 2]
            cells.append("never" if p50 == float("inf") else f"{p50:.1f}")
            cells.append(f">{rows[0]['seconds']:.0f}" if missing else f"{got[-1]:.1f}")
        print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    sys.exit(main())
