"""Janus (the C WebRTC server, Debian ``janus``) as the peer in ``bench.peer``: the minimal
configuration the bench writes for it, and a light viewer of its streaming plugin.

The configuration loads only the streaming plugin and the HTTP transport (from directories of
symlinks to the installed ones), offers loopback candidates only, and defines one RTP
mountpoint fed by the same ffmpeg source stagecast gets over WHIP. ``event_loops`` is Janus's
own knob: 0 is its default (a thread and GLib loop per handle, i.e. per viewer), 1 puts every
handle on one loop, as a stagecast node does.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription

from gateway.synthetic import Viewer
from relay.rtc.adapter import install_ingest_tap
from relay.rtc.peer import close_quietly, rtc_configuration

JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
MOUNT_ID = 1
VIDEO_PT = 96
AUDIO_PT = 111


@dataclass(frozen=True, slots=True)
class JanusPorts:
    http: int
    video_rtp: int
    audio_rtp: int


def janus_installed() -> str | None:
    """Why Janus cannot run here, or None when it can."""
    import shutil

    if shutil.which("janus") is None:
        return "janus is not installed (apt-get install janus)"
    for sub, name in (("plugins", "libjanus_streaming.so"), ("transports", "libjanus_http.so")):
        if not (JANUS_LIB / sub / name).exists():
            return f"{JANUS_LIB / sub / name} is missing"
    return None


def janus_jcfg(folder: Path, *, event_loops: int) -> str:
    """janus.jcfg: no session timeout (the light viewers send no keepalives), loopback only."""
    loops = f"\tevent_loops = {event_loops}\n" if event_loops else ""
    return (
        "general: {\n"
        f'\tconfigs_folder = "{folder}"\n'
        f'\tplugins_folder = "{folder / "plugins"}"\n'
        f'\ttransports_folder = "{folder / "transports"}"\n'
        f'\tevents_folder = "{folder / "events"}"\n'
        f'\tloggers_folder = "{folder / "loggers"}"\n'
        "\tdebug_level = 3\n"
        "\tsession_timeout = 0\n"
        f"{loops}"
        "}\n"
        'media: {\n\trtp_port_range = "40000-59999"\n}\n'
        "nat: {\n"
        '\tice_enforce_list = "lo"\n'
        "\tnice_debug = false\n"
        "}\n"
        "plugins: {\n}\ntransports: {\n}\nevents: {\n\tbroadcast = false\n}\n"
    )


def http_jcfg(port: int) -> str:
    return (
        "general: {\n"
        '\tjson = "compact"\n\tbase_path = "/janus"\n\thttp = true\n'
        f'\tport = {port}\n\tip = "127.0.0.1"\n\thttps = false\n'
        "}\nadmin: {\n\tadmin_http = false\n}\n"
    )


def streaming_jcfg(ports: JanusPorts) -> str:
    """One mountpoint fed with plain RTP: H.264 (the source's constrained baseline) and Opus."""
    return (
        "general: {\n}\n"
        "bench: {\n"
        f'\ttype = "rtp"\n\tid = {MOUNT_ID}\n\tdescription = "bench"\n'
        "\tmedia = (\n"
        f'\t\t{{ type = "video" mid = "v" port = {ports.video_rtp} pt = {VIDEO_PT} '
        'codec = "h264" fmtp = "profile-level-id=42e01f;packetization-mode=1" },\n'
        f'\t\t{{ type = "audio" mid = "a" port = {ports.audio_rtp} pt = {AUDIO_PT} '
        'codec = "opus" }\n'
        "\t)\n"
        "}\n"
    )


def write_janus_config(folder: Path, ports: JanusPorts, *, event_loops: int) -> Path:
    """Writes the configuration into ``folder``; returns janus.jcfg's path."""
    for sub, keep in (("plugins", "libjanus_streaming.so"), ("transports", "libjanus_http.so")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        link = folder / sub / keep
        if not link.exists():
            link.symlink_to(JANUS_LIB / sub / keep)
    for sub in ("events", "loggers"):
        (folder / sub).mkdir(exist_ok=True)
    (folder / "janus.transport.http.jcfg").write_text(http_jcfg(ports.http))
    (folder / "janus.plugin.streaming.jcfg").write_text(streaming_jcfg(ports))
    main = folder / "janus.jcfg"
    main.write_text(janus_jcfg(folder, event_loops=event_loops))
    return main


def janus_argv(config: Path) -> list[str]:
    return ["janus", "--config", str(config), "--configs-folder", str(config.parent)]


class JanusError(RuntimeError):
    pass


@dataclass(eq=False)
class JanusViewer(Viewer):
    """A light viewer of the streaming plugin: counts frames from RTP, decodes nothing."""

    session: str = ""

    async def close(self, *, delete: bool = True) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self.client.post(self.session, json={"janus": "destroy", "transaction": _tx()})
        await super().close(delete=False)


def _tx() -> str:
    return uuid.uuid4().hex[:12]


async def _call(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = (await client.post(path, json={**body, "transaction": _tx()})).json()
    if reply.get("janus") == "error":
        raise JanusError(str(reply.get("error")))
    return reply


async def janus_watch(base_url: str, *, timeout: float = 10.0) -> JanusViewer:
    """create -> attach -> watch (Janus offers) -> aiortc answers -> start."""
    client = httpx.AsyncClient(base_url=base_url, timeout=timeout)
    pc = RTCPeerConnection(rtc_configuration(()))
    try:
        joined = time.monotonic()
        session = (await _call(client, "/janus", {"janus": "create"}))["data"]["id"]
        spath = f"/janus/{session}"
        handle = (
            await _call(client, spath, {"janus": "attach", "plugin": "janus.plugin.streaming"})
        )["data"]["id"]
        hpath = f"{spath}/{handle}"
        await _call(
            client, hpath, {"janus": "message", "body": {"request": "watch", "id": MOUNT_ID}}
        )
        offer = None
        deadline = time.monotonic() + timeout
        while offer is None and time.monotonic() < deadline:
            event = (await client.get(spath, params={"maxev": 1})).json()
            offer = event.get("jsep") if isinstance(event, dict) else None
        if offer is None:
            raise JanusError("no offer from the streaming plugin")
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = {"type": "answer", "sdp": pc.localDescription.sdp}
        await _call(
            client, hpath, {"janus": "message", "body": {"request": "start"}, "jsep": answer}
        )
        viewer = JanusViewer(pc, hpath, client, {}, joined, session=spath)
        for t in pc.getTransceivers():
            install_ingest_tap(t.receiver, functools.partial(viewer._count_packets, t.kind))
    except BaseException:
        await close_quietly(pc)
        await client.aclose()
        raise
    return viewer
