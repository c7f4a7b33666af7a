"""Per-viewer layer adaptation through the impaired-network test bed (bench/netbed), with the
same run's pinned viewer as the baseline.

    python -m bench.adaptation [--seconds 30] [--profiles 1mbps,500kbps,...] [--json out.json]
                               [--viewers aiortc,chromium] [--no-probing]
                               [--playout-delay | --no-playout-delay] [--no-nack-solicit] [--fec]
                               [--feedback-repair]

The source of layers is the mixer's ladder (simulcast was not in main when this was written):
the stamped 720p anchor plus a small second anchor (a 320x180 inset, so the room is mixed; the
custom layout draws the stamped one full-canvas so its stamps stay readable in every layer),
encoded once per rendition: 720p 1500, 360p 500 and 180p 200 kbit/s (+ 64 kbit/s Opus). Per
profile a fresh bed: the profile on two viewers' legs (each its own router leg and tbf); viewer
``auto`` watches ``/whep/bed`` (adaptation on), viewer ``pinned`` watches ``?layer=720p``
(adaptation off: today's behaviour); viewer ``control`` watches ``?layer=180p`` on a clean leg:
the freezes the loaded machine makes by itself (a mixer that misses ticks stalls every layer at
once, a viewer's decoder waits for a core), to set the others' against. All are aiortc
receivers that start over at a keyframe past a lost packet, as browsers do (``bench.netbed.peer
--resync``; ``--stock-aiortc`` for aiortc as it is, whose jitter buffer holds every frame
behind a packet that never comes until 512 packets later, 17 s of the 180p layer). Every half
second the operator API tells each viewer's layer, which gives the switches and when they
happened.

Printed per profile and viewer: share of time frozen (Chromium's rule, from the first picture on,
as its getStats counts it), the time to the first picture from the WHEP POST (``ttff s``; on a
lossy leg the handshake's lost packets: it is not freezing), the share frozen after the viewer
settled (its first switch, the wait for a first picture after it included; failed probes up
after it count in), freezes, ``own %``: the share in freezes
that overlap none of the clean ``control`` viewer's (a loaded machine stalls every viewer at
once; what is left is the link's and the viewer's own), ``gaps %``: issue 17's plain rule
(frame intervals over 3 nominal ones, 100 ms at 30 fps; Chromium's rule needs 183 ms; for
Chromium from its requestVideoFrameCallback presentation times), glass-to-glass p50/p95,
time to settle (that first switch, from the viewer's WHEP POST; for
``drop400`` the time from the dip to the first move down and from the recovery to the first
move up), switches (up ones: probes), switches per 10 s, the final layer, the delivered
kbit/s and the audio frames decoded against the 50 a second sent. Needs root.

``--viewers aiortc,chromium`` adds a headless Chromium viewer (``chromium``, adapting: the
watch page, ``bench.netbed.chromium --bench``) on its own leg with the same profile: the only
viewer here that sends transport-cc feedback, so the only one the estimate (and probing) can
bring back up after a dip; its freezes are Chromium's own (freezeCount/totalFreezesDuration),
its g2g from the stamps of the frames it presented. The gateway's CPU seconds over the watch
(from /proc) and each viewer's estimate, probes and probe bytes (operator API) go in the JSON;
``--no-probing`` (``media.viewer_probing = false``) is the baseline for probing's cost;
``--playout-delay`` / ``--no-playout-delay`` set ``media.viewer_playout_delay`` (off by
default) for the minimum playout delay given to lossy Chromium viewers (``pd`` in the g2g
cell: the largest given, ms;
``jb``: Chromium's jitter buffer target/delay per frame over the run, ms); ``--no-nack-solicit``
(``media.viewer_nack_solicit = false``) the baseline for the holes made so that aiortc viewers
NACK again; ``--solicit-lossy 0`` (``media.viewer_nack_solicit_lossy_s``, 0.1 by default) makes
them in every frame while a viewer loses 3 % or more. Each freeze of an aiortc viewer is put
down to what held it from the viewer's own NACK log (``bench.netbed.holes``): a hole repaired
after one NACK or more, one never repaired (keyframe), or no hole (machine, decoder, source).
``--no-feedback-repair`` (``media.viewer_feedback_repair = false``) is the baseline for the
resends (on by default) of what a Chromium viewer's transport-cc feedback reports lost and no
NACK asked for (``unasked``/``repaired``/``late nacks`` per own freeze, counted either way).
A Chromium viewer's audio: packets lost on the link (what RED rebuilt included), the share of
its samples that were concealment and the concealment events, its audio jitter buffer's delay;
``--audio-red 0`` (``media.viewer_audio_red``) is the baseline for Opus in RED.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from bench.netbed import netns
from bench.netbed.bed import NetBed, _readline
from bench.netbed.holes import freeze_causes as hole_causes
from bench.netbed.holes import hole_summary
from bench.netbed.profiles import PROFILES, profile
from bench.netbed.room import OPERATOR_KEY, SECRET, BedRoom
from bench.netbed_run import git_head, log, schedule_rates
from relay.auth.tokens import TokenAuthority

LADDER = (("720p", 1280, 720, 1500), ("360p", 640, 360, 500), ("180p", 320, 180, 200))
RENDITIONS = json.dumps(
    [{"name": n, "width": w, "height": h, "video_bitrate_kbps": k} for n, w, h, k in LADDER]
)
TOP = LADDER[0][0]
BOTTOM = LADDER[-1][0]
# the aiortc viewers: leg -> WHEP query
VIEWERS = {"auto": "", "pinned": f"layer={TOP}", "control": f"layer={BOTTOM}"}
CLEAN_LEGS = ("control",)  # the machine's own freezes: a clean leg, the cheapest layer
CHROMIUM_LEG = "chromium"
JOIN_LEAD = 15.0  # s the viewers watch beyond --seconds with a Chromium among them


def viewer_legs(kinds: str) -> dict[str, str]:
    """The viewer legs of ``--viewers`` (aiortc: adapting and pinned; chromium: adapting)."""
    names = {k.strip() for k in kinds.split(",") if k.strip()}
    if not names or names - {"aiortc", "chromium"}:
        raise ValueError(f"--viewers: aiortc and/or chromium, not {kinds!r}")
    legs = dict(VIEWERS) if "aiortc" in names else {}
    if "chromium" in names:
        legs[CHROMIUM_LEG] = ""
    return legs


DEFAULT_PROFILES = "clean,1mbps,500kbps,loss2,loss5-rtt40,burst3,drop400,rtt300"


def ladder_room(
    bed: NetBed, log_dir: Path | None = None, env: dict[str, str] | None = None
) -> tuple[BedRoom, Any]:
    """The room, mixed, with its layout set; returns (room, the inset anchor's process)."""
    gateway_env = {"STAGECAST_STAGE__RENDITIONS": RENDITIONS, "STAGECAST_STAGE__FPS": "30"}
    room = BedRoom(bed, log_dir=log_dir, gateway_env={**gateway_env, **(env or {})})
    room.start()
    token = TokenAuthority(SECRET).mint(room.room, "anchor", "netbed-inset", 3600)
    inset = bed.popen(
        bed.legs[room.anchor_leg].ns,
        [
            *room._peer("anchor"),
            *("--token", token, "--kbps", "150", "--width", "320", "--height", "180"),
        ],
        env=room._env(),
        stderr=room._log("inset"),
    )
    assert inset.stdout is not None
    line = _readline(inset.stdout, 30.0)
    if "location" not in line:
        raise RuntimeError(f"the inset anchor did not publish: {line!r}")
    deadline = time.monotonic() + 30.0
    while True:
        program = room.api(f"/v1/rooms/{room.room}/program")
        if program.get("mode") == "mixed" and len(program.get("anchors", [])) == 2:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the room did not mix: {program}")
        time.sleep(0.3)
    stamped, small = program["anchors"]  # join order: the stamped anchor first
    regions = [
        {"anchor_id": stamped, "x": 0, "y": 0, "w": 1, "h": 1, "z": 0},
        {"anchor_id": small, "x": 0.74, "y": 0.74, "w": 0.24, "h": 0.24, "z": 1},
    ]
    put(room, f"/v1/rooms/{room.room}/layout", {"mode": "custom", "regions": regions})
    return room, inset


def put(room: BedRoom, path: str, body: dict[str, Any]) -> Any:
    def call() -> Any:
        headers = {"Authorization": f"Bearer {OPERATOR_KEY}"}
        with httpx.Client(base_url=room.base_url, timeout=5.0, headers=headers) as client:
            resp = client.put(path, json=body)
            resp.raise_for_status()
            return resp.json()

    return netns.run_in(room.bed.gateway_ns, call, timeout=15.0)


def watch(
    room: BedRoom,
    legs: dict[str, str],
    seconds: float,
    timeout: float = 60.0,
    *,
    resync: bool = True,
    chromium: frozenset[str] = frozenset(),
    samples: dict[str, list[dict[str, Any]]] | None = None,
    on_joined: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[tuple[float, str | None]]]]:
    """Viewers on ``legs`` (leg -> WHEP query) for ``seconds``: their results, and each
    session's layer over time (monotonic, from the operator API every 0.5 s). ``resync``:
    the viewers start over at a keyframe past a lost packet, as browsers do
    (``bench.netbed.peer --resync``). Legs in ``chromium`` run a headless Chromium on the
    watch page instead (``bench.netbed.chromium --bench``; the query is not used). ``samples``
    collects each session's operator API view (estimate, probes) every 0.5 s; ``on_joined``
    is called once every viewer has a session (a Chromium takes seconds to start)."""
    extra = ["--resync"] if resync else []

    def command(leg: str, query: str) -> list[str]:
        if leg in chromium:
            return [sys.executable, "-m", "bench.netbed.chromium", room.base_url, room.room,
                    "--seconds", str(seconds), "--bench"]  # fmt: skip
        return [*room._peer("viewer"), "--seconds", str(seconds), "--query", query, *extra]

    procs = [
        room.bed.popen(
            room.bed.legs[leg].ns,
            command(leg, query),
            env=room._env(),
            stderr=room._log(f"viewer-{leg}"),
        )
        for leg, query in legs.items()
    ]
    timeline: dict[str, list[tuple[float, str | None]]] = {}
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + seconds + timeout
    joined = on_joined is None
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if not joined and len(seen) >= len(procs):
            joined = True
            assert on_joined is not None
            on_joined()
        with contextlib.suppress(httpx.HTTPError, OSError, TimeoutError):
            now = time.monotonic()
            for sid, v in room.viewer_counters().items():
                seen[sid] = v
                if samples is not None:
                    samples.setdefault(sid, []).append({"t": now, **{k: v.get(k) for k in SAMPLED}})
                track = timeline.setdefault(sid, [])
                if not track or track[-1][1] != v.get("layer"):
                    track.append((now, v.get("layer")))
        time.sleep(0.5)
    out = []
    for leg, proc in zip(legs, procs, strict=True):
        assert proc.stdout is not None
        try:
            line = _readline(proc.stdout, 5.0)
        except TimeoutError:
            line = ""
        result = json.loads(line) if line.strip() else {"error": "no result"}
        result["leg"] = leg
        result["gateway"] = seen.get(str(result.get("session")), {})
        out.append(result)
    return out, timeline


VERDICTS = ("nacked_packets", "retransmissions", "rtx_follow_ups", "rtx_late", "rtx_repeat",
            "rtx_over_budget", "keyframe_requests", "nack_solicits", "solicited_nacks",
            "feedback_lost", "feedback_unasked", "feedback_repairs", "late_nacks")  # fmt: skip
SAMPLED = ("layer", "estimate_source", "estimate_bps", "acked_bps", "sent_bps", "delay_usage",
           "estimate_loss", "probes", "probes_succeeded", "probe_bytes", "probe_bps",
           "rtt_ms", "playout_delay_ms", "late_nack_ms", "unasked_ms", *VERDICTS)  # fmt: skip


def freeze_causes(
    v: dict[str, Any], control: dict[str, Any] | None, lead: float = 0.5
) -> list[dict[str, Any]]:
    """Each freeze of ``v`` with what the gateway saw of the viewer's NACKs from ``lead`` s
    before it began to its end (the counters' growth between the operator API samples, every
    0.5 s): packets asked for, resent, second copies, refused late (superseded or too old),
    as a repeat within a round trip, over budget, keyframe requests; and whether the clean
    control viewer froze at the same time (the machine's, then)."""
    samples = v.get("samples") or []
    spans = [(end - d, end) for end, d in (control or {}).get("freeze_events", [])]
    out = []
    for end, d in v.get("freeze_events", []):
        start = end - d
        inside = [s for s in samples if start - lead <= s["t"] <= end + 0.5]
        before = [s for s in samples if s["t"] < start - lead]
        base = before[-1] if before else (inside[0] if inside else {})
        last = inside[-1] if inside else base
        row: dict[str, Any] = {
            "at": round(start - v.get("joined_at", 0.0), 2),
            "s": round(d, 3),
            "machine": control is not v and any(a < end and start < b for a, b in spans),
            "rtt_ms": last.get("rtt_ms"),
        }
        for k in VERDICTS:
            row[k] = (last.get(k) or 0) - (base.get(k) or 0)
        out.append(row)
    return out


def frozen_after(
    result: dict[str, Any], since: float, events: str = "freeze_events"
) -> float | None:
    """Share of the time from ``since`` to the end of the run spent frozen, the wait for the
    first picture included (a viewer that shows nothing for 29 s and then 30 frames was not
    frozen for 0 % of the run). ``events``: "gap_events" for issue 17's plain rule (frame
    intervals over 3 nominal ones) instead of Chromium's."""
    end: float | None = result.get("ended_at")
    joined = result.get("joined_at")
    if end is None or joined is None or since >= end:
        return None
    ttff = result.get("ttff_s")
    first = end if ttff is None else joined + ttff
    frozen = max(0.0, min(first, end) - since)
    for at, duration in result.get(events, []):
        frozen += max(0.0, min(at, end) - max(at - duration, since, first))
    return min(1.0, frozen / (end - since))


def analyse(
    result: dict[str, Any],
    line: list[tuple[float, str | None]],
    steps: list[tuple[float, int | None]],
    t0: float,
) -> dict[str, Any]:
    """Switch times and settling for one viewer (times relative to its join)."""
    joined: float = result.get("joined_at", t0)
    ranks = {name: i for i, (name, *_rest) in enumerate(LADDER)}
    switches: list[tuple[float, str, bool]] = []  # (s since join, layer, down?)
    for (_, prev), (at, layer) in itertools.pairwise(line):
        if prev is not None and layer is not None:
            switches.append((at - joined, layer, ranks.get(layer, 0) > ranks.get(prev, 0)))
    end = result.get("ended_at", joined)
    span = max(1e-9, end - joined)
    row: dict[str, Any] = {
        "switches": len(switches),
        "switches_per_10s": 10 * len(switches) / span,
        "layer": line[-1][1] if line else None,
        "timeline": [(round(t, 2), name) for t, name, _ in switches],
    }
    if steps:  # a dip: down after it starts, up after it ends
        dip = next((at for at, kbps in steps if kbps is not None), None)
        back = next((at for at, kbps in steps if kbps is None), None)
        rel = (t0 - joined) if t0 else 0.0
        if dip is not None:
            d = dip + rel
            downs = [t for t, _, down in switches if down and t >= d]
            row["down_after_dip_s"] = downs[0] - d if downs else None
        if back is not None:
            up_from = back + rel
            ups = [t for t, _, down in switches if not down and t >= up_from]
            row["up_after_recovery_s"] = ups[0] - up_from if ups else None
        settle = joined
    else:  # settled: the first move (down onto a layer that fits), probes up after it aside
        settle = joined + switches[0][0] if switches else joined
        row["settle_s"] = switches[0][0] if switches else 0.0
    row["probes_up"] = sum(1 for _, _, down in switches if not down)
    row["frozen_after_settle"] = frozen_after(result, settle)
    return row


def run_profile(name: str, args: argparse.Namespace, log_dir: Path | None) -> dict[str, Any]:
    p = profile(name)
    viewer_legs_ = viewer_legs(args.viewers)
    clean = PROFILES["clean"]
    legs = {"anchor": clean, **{v: clean if v in CLEAN_LEGS else p for v in viewer_legs_}}
    shaped = [v for v in viewer_legs_ if v not in CLEAN_LEGS]
    row: dict[str, Any] = {"profile": name, "description": p.description}
    samples: dict[str, list[dict[str, Any]]] = {}
    with NetBed(legs, seed=args.seed) as bed:
        env = {}
        if args.blind_hold is not None:
            env["STAGECAST_STAGE__FALLBACK_HOLD"] = str(args.blind_hold)
        if args.no_probing:
            env["STAGECAST_MEDIA__VIEWER_PROBING"] = "false"
        if args.no_playout_delay:
            env["STAGECAST_MEDIA__VIEWER_PLAYOUT_DELAY"] = "false"
        if args.playout_delay:
            env["STAGECAST_MEDIA__VIEWER_PLAYOUT_DELAY"] = "true"
        if args.fec:
            env["STAGECAST_MEDIA__VIEWER_FEC"] = "true"
        if args.solicit_lossy is not None:
            env["STAGECAST_MEDIA__VIEWER_NACK_SOLICIT_LOSSY_S"] = str(args.solicit_lossy)
        if args.no_nack_solicit:
            env["STAGECAST_MEDIA__VIEWER_NACK_SOLICIT"] = "false"
        if args.no_feedback_repair:
            env["STAGECAST_MEDIA__VIEWER_FEEDBACK_REPAIR"] = "false"
        if args.audio_red is not None:
            env["STAGECAST_MEDIA__VIEWER_AUDIO_RED"] = str(args.audio_red)
        room, inset = ladder_room(bed, log_dir / name if log_dir else None, env)
        try:
            time.sleep(2.0)  # the mixer's first keyframes out
            # the profile's clock starts when every viewer has joined: a Chromium takes seconds
            # to start on a loaded machine, the aiortc viewers watch that much longer
            lead = JOIN_LEAD if CHROMIUM_LEG in viewer_legs_ else 0.0
            stops: list[threading.Event] = []
            clock = {"t0": time.monotonic(), "cpu0": room.gateway_cpu()}

            def begin() -> None:
                clock["t0"], clock["cpu0"] = time.monotonic(), room.gateway_cpu()
                stops.append(schedule_rates(bed, p, shaped, args.seconds))

            if not lead:
                begin()
            try:
                viewers, timeline = watch(
                    room,
                    viewer_legs_,
                    args.seconds + lead,
                    resync=not args.stock_aiortc,
                    chromium=frozenset({CHROMIUM_LEG}) & set(viewer_legs_),
                    samples=samples,
                    on_joined=begin if lead else None,
                )
            finally:
                for stop in stops:
                    stop.set()
            t0, cpu0 = clock["t0"], clock["cpu0"]
            row["gateway_cpu_s"] = room.gateway_cpu() - cpu0
            row["watch_s"] = time.monotonic() - t0
            row["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
            metrics = room.api("/metrics")
            with contextlib.suppress(OSError, ValueError):
                assert inset.stdin is not None
                inset.stdin.close()
            room.stop_anchor()
        finally:
            room.close()
    steps = p.rate_schedule(args.seconds)
    control = next((v for v in viewers if v.get("leg") in CLEAN_LEGS), None)
    for v in viewers:
        line = timeline.get(str(v.get("session")), [])
        v["adaptation"] = analyse(v, line, steps, t0) if "error" not in v else {}
        v["samples"] = samples.get(str(v.get("session")), [])
        last = v["samples"][-1] if v["samples"] else {}
        v["probes"] = (last.get("probes") or 0, last.get("probes_succeeded") or 0)
        v["probe_bytes"] = last.get("probe_bytes") or 0
    for v in viewers:
        v["freeze_causes"] = freeze_causes(v, control) if "error" not in v else []
        holes = v.get("holes") or []
        v["hole_causes"] = [asdict(c) for c in hole_causes(v.get("freeze_events", []), holes)]
        v["hole_summary"] = hole_summary(holes)
    row["viewers"] = viewers
    row["metrics_switches"] = [
        ln for ln in str(metrics).splitlines() if ln.startswith("stagecast_viewer_layer_switches")
    ]
    return row


COLUMNS = (
    "profile", "viewer", "frozen %", "ttff s", "after settle %", "freezes", "own % (n)",
    "gaps % (n)", "g2g p50/p95 ms", "settle s", "switches (up)", "/10 s", "layer", "kbps",
    "audio %", "audio lost", "concealed % (ev)", "audio jb ms", "probes (ok)",
)  # fmt: skip


def cells(row: dict[str, Any]) -> list[list[str]]:
    out = []
    control = next((v for v in row["viewers"] if v.get("leg") in CLEAN_LEGS), None)
    for v in row["viewers"]:
        if "error" in v:
            out.append([row["profile"], v["leg"], v["error"], *[""] * (len(COLUMNS) - 3)])
            continue
        a = v["adaptation"]
        if "settle_s" in a:
            settle = f"{a['settle_s']:.1f}"
        else:
            down, up = a.get("down_after_dip_s"), a.get("up_after_recovery_s")
            settle = "down " + ("-" if down is None else f"{down:.1f}")
            settle += " / up " + ("-" if up is None else f"{up:.1f}")
        after = a.get("frozen_after_settle")
        g50, g95 = v.get("g2g_p50_ms"), v.get("g2g_p95_ms")
        out.append(
            [
                row["profile"],
                v["leg"],
                f"{100 * frozen_share(v):.1f}",
                "-" if v.get("ttff_s") is None else f"{v['ttff_s']:.2f}",
                "-" if after is None else f"{100 * after:.1f}",
                str(v["freezes"]),
                own_cell(v, control),
                gap_cell(v),
                f"{'-' if g50 is None else round(g50)}/{'-' if g95 is None else round(g95)}"
                + playout_note(v),
                settle,
                f"{a['switches']} ({a['probes_up']})",
                f"{a['switches_per_10s']:.1f}",
                str(a["layer"]),
                f"{v['kbps']:.0f}",
                audio_share(v),
                *audio_cells(v),
                "{} ({})".format(*v.get("probes", (0, 0))),
            ]
        )
    return out


def frozen_share(v: dict[str, Any], events: str = "freeze_events") -> float:
    """Chromium's rule as its getStats counts it (totalFreezesDuration): the share of the time
    from the first picture on spent frozen; 1.0 when none came. The wait for the first picture
    is ``ttff s``, a column of its own: on a lossy leg it holds the handshake's lost packets (a
    lost TCP SYN or DTLS flight waits 1 s), which said nothing about freezing and read as
    3-6 % frozen at 2 % loss where the viewer never froze. ``events``: as ``frozen_after``."""
    ttff = v.get("ttff_s")
    if ttff is None or "joined_at" not in v:
        return 1.0
    return frozen_after(v, v["joined_at"] + ttff, events) or 0.0


def playout_note(v: dict[str, Any]) -> str:
    """The minimum playout delay the gateway gave the viewer last (``pd``, ms) and Chromium's
    jitter buffer target and delay per frame over the run (``jb``), when there are any."""
    notes = []
    given = [s.get("playout_delay_ms") for s in v.get("samples") or []]
    if any(given):
        notes.append(f"pd {max(g or 0 for g in given)}")
    if v.get("jb_target_ms") is not None:
        notes.append(f"jb {v['jb_target_ms']:.0f}/{v.get('jb_delay_ms') or 0:.0f}")
    return f" ({', '.join(notes)})" if notes else ""


def own_freezes(v: dict[str, Any], control: dict[str, Any] | None) -> list[tuple[float, float]]:
    """``v``'s freezes that overlap none of the clean ``control`` viewer's (a starved mixer
    or machine stalls every viewer at once: those are the machine's, the rest the link's)."""
    if control is None or control is v or "freeze_events" not in control:
        return list(v.get("freeze_events", []))
    spans = [(end - d, end) for end, d in control["freeze_events"]]
    return [
        (end, d)
        for end, d in v.get("freeze_events", [])
        if not any(a < end and end - d < b for a, b in spans)
    ]


def own_cell(v: dict[str, Any], control: dict[str, Any] | None) -> str:
    """Share of the run in freezes the clean control viewer did not have, and how many (the
    wait for the first picture left out)."""
    if control is None or control is v or "joined_at" not in v:
        return "-"
    own = own_freezes(v, control)
    share = frozen_after({**v, "own_events": own, "ttff_s": 0.0},
                         v["joined_at"], "own_events")  # fmt: skip
    return f"{100 * (share or 0.0):.1f} ({len(own)})"


def gap_cell(v: dict[str, Any]) -> str:
    """Share of the run in frame intervals over 3 nominal ones, and how many."""
    if "gap_events" not in v:
        return "-"
    share = frozen_share(v, "gap_events")
    return f"{100 * share:.1f} ({len(v['gap_events'])})"


def cause_counts(v: dict[str, Any]) -> str:
    """The viewer's freezes by what held them (``bench.netbed.holes``): a hole repaired after
    one NACK or after more (with how long it was open, ms), one never repaired (the picture
    restarted at a keyframe), or no hole (the machine, the decoder or the source)."""
    causes = v.get("hole_causes", [])
    parts = []
    for label, pick in (
        ("1 NACK", lambda c: c["cause"] == "repaired" and c["nacks"] <= 1),
        ("more NACKs", lambda c: c["cause"] == "repaired" and c["nacks"] > 1),
        ("keyframe", lambda c: c["cause"] == "keyframe"),
        ("no hole", lambda c: c["cause"] == "no hole"),
    ):
        chosen = [c for c in causes if pick(c)]
        opened = ",".join(str(round(1000 * c["open_s"])) for c in chosen if c["open_s"])
        parts.append(f"{label} {len(chosen)}" + (f" ({opened} ms)" if opened else ""))
    return ", ".join(parts)


def audio_share(v: dict[str, Any]) -> str:
    """Audio frames decoded against the 50 a second Opus sends (20 ms frames)."""
    span = v.get("ended_at", 0.0) - v.get("joined_at", 0.0)
    if span <= 0 or "audio_frames" not in v:
        return "-"
    return f"{min(100.0, 100 * v['audio_frames'] / (50 * span)):.0f}"


def audio_cells(v: dict[str, Any]) -> list[str]:
    """A Chromium viewer's audio (``bench.netbed.chromium.audio_result``): packets lost on the
    link (what RED rebuilt included), the share of its samples that were concealment with the
    concealment events, and its jitter buffer's delay; "-" for aiortc viewers."""
    share = v.get("audio_concealed_share")
    if share is None:
        return ["-", "-", "-"]
    lost = v.get("audio_lost")
    received = v.get("audio_received") or 0
    lost_cell = "-" if lost is None else f"{lost} ({100 * lost / max(1, lost + received):.1f} %)"
    jb = v.get("audio_jb_ms")
    return [
        lost_cell,
        f"{100 * share:.2f} ({v.get('audio_conceal_events')})",
        "-" if jb is None else f"{jb:.0f}",
    ]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [list(COLUMNS)] + [c for r in rows for c in cells(r)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adaptation", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="watch time per profile")
    parser.add_argument("--profiles", default=DEFAULT_PROFILES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--blind-hold",
        type=float,
        default=None,
        help="stage.fallback_hold: quiet seconds before a probe up without an estimate",
    )
    parser.add_argument(
        "--stock-aiortc",
        action="store_true",
        help="viewers without --resync: aiortc's jitter buffer waits 512 packets past a hole",
    )
    parser.add_argument(
        "--viewers",
        default="aiortc",
        help="aiortc (adapting + pinned), chromium (adapting, the watch page), or both",
    )
    parser.add_argument(
        "--no-probing",
        action="store_true",
        help="media.viewer_probing = false: the baseline for probing's cost and effect",
    )
    parser.add_argument(
        "--no-playout-delay",
        action="store_true",
        help="no playout-delay extension for any viewer (media.viewer_playout_delay = false)",
    )
    parser.add_argument(
        "--playout-delay",
        action="store_true",
        help="the playout-delay extension for lossy viewers (media.viewer_playout_delay = true)",
    )
    parser.add_argument(
        "--fec",
        action="store_true",
        help="ULPFEC in RED for viewers that offer it (media.viewer_fec = true; default off)",
    )
    parser.add_argument(
        "--no-nack-solicit",
        action="store_true",
        help="no holes made for viewers that NACK once (media.viewer_nack_solicit = false)",
    )
    parser.add_argument(
        "--solicit-lossy",
        type=float,
        default=None,
        help="media.viewer_nack_solicit_lossy_s: seconds between holes made at >= 3 %% loss "
        "(0: every frame; default 0.1, the pace of lower loss)",
    )
    parser.add_argument(
        "--no-feedback-repair",
        action="store_true",
        help="no resends of packets a transport-cc viewer's feedback reports lost and no NACK "
        "asked for (media.viewer_feedback_repair = false; the baseline)",
    )
    parser.add_argument(
        "--audio-red",
        type=int,
        default=None,
        help="media.viewer_audio_red: earlier Opus payloads per audio packet (while they lose "
        "packets: media.viewer_audio_red_on_loss) for viewers that "
        "offer RED (Chromium); 0: none (the baseline)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--logs", type=Path, default=None, help="process logs directory")
    args = parser.parse_args(argv)
    reason = netns.why_unavailable()
    if reason is not None:
        print(f"cannot build the test bed here: {reason}", file=sys.stderr)
        return 2
    viewer_legs(args.viewers)  # fails early on a typo
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    for n in names:
        profile(n)
    rows = []
    for name in names:
        log(f"profile {name} ({args.seconds:.0f} s; viewers {args.viewers})...")
        rows.append(run_profile(name, args, args.logs))
        log(table(rows[-1:]))
        r = rows[-1]
        log(f"  gateway {r['gateway_cpu_s']:.2f} CPU s over {r['watch_s']:.1f} s, load "
            + " ".join(r["loadavg"]))  # fmt: skip
        for v in r["viewers"]:
            log(f"  {v['leg']}: {v.get('adaptation', {}).get('timeline')}"
                f" probes {v.get('probes')} {v.get('probe_bytes')} B"
                + (f" resolution {v['resolution']}" if "resolution" in v else ""))  # fmt: skip
            if v.get("hole_causes") or v.get("hole_summary", {}).get("holes"):
                log(f"  {v['leg']} freezes by what held them: {cause_counts(v)}; "
                    f"holes {v['hole_summary']}")  # fmt: skip
            own = [c for c in v.get("freeze_causes", []) if not c["machine"]]
            if own and v["leg"] not in CLEAN_LEGS:
                log(f"  {v['leg']} freezes the control did not share: " + "; ".join(
                    f"{c['at']} s {c['s']} s asked {c['nacked_packets']} resent "
                    f"{c['retransmissions']}+{c['rtx_follow_ups']} late {c['rtx_late']} "
                    f"repeat {c['rtx_repeat']} over {c['rtx_over_budget']} pli "
                    f"{c['keyframe_requests']} rtt {c['rtt_ms']} unasked "
                    f"{c['feedback_unasked']} repaired {c['feedback_repairs']} late nacks "
                    f"{c['late_nacks']}" for c in own))  # fmt: skip
    print(f"commit {git_head()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{args.seconds:.0f} s per profile, blind hold "
          f"{args.blind_hold if args.blind_hold is not None else 'default'}, viewers "
          f"{args.viewers} (aiortc {'stock' if args.stock_aiortc else 'with --resync'}), "
          f"probing {'off' if args.no_probing else 'on'}; "
          f"playout delay {'on' if args.playout_delay else 'off'}; "
          f"nack solicit {'off' if args.no_nack_solicit else 'on'}"
          f" (lossy {args.solicit_lossy if args.solicit_lossy is not None else 'default'}); "
          f"feedback repair {'off' if args.no_feedback_repair else 'on'}; audio red "
          f"{args.audio_red if args.audio_red is not None else 'default'}; ladder "
          + ", ".join(f"{n} {k} kbps" for n, _, _, k in LADDER))  # fmt: skip
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=1, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
