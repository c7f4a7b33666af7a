"""The ``stagecast status`` table, built from the operator API's JSON (pure, so it is testable)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _rate(bps: float | None) -> str:
    if not bps:
        return "-"
    return f"{bps / 1e6:.2f} Mb/s" if bps >= 1e6 else f"{bps / 1e3:.0f} kb/s"


def render_status(url: str, rooms: list[dict[str, Any]], streams: list[dict[str, Any]]) -> Table:
    by_room = {s["room"]: s for s in streams}
    table = Table(title=f"stagecast @ {url}: {len(rooms)} rooms", expand=False)
    for col in ("room", "live", "anchors", "viewers", "video", "size", "fps", "bitrate", "audio"):
        table.add_column(col, justify="right" if col in ("viewers", "fps") else "left")
    for room in sorted(rooms, key=lambda r: r["name"]):
        s = by_room.get(room["name"], {})
        video = s.get("video") or {}
        audio = s.get("audio") or {}
        size = f"{s['width']}x{s['height']}" if s.get("width") else "-"
        table.add_row(
            room["name"] + (" (private)" if room.get("private") else ""),
            "yes" if room.get("live") else "no",
            ", ".join(a["subject"] for a in room.get("anchors", [])) or "-",
            str(room.get("viewers", 0)),
            video.get("codec", "-") + (" muted" if video.get("muted") else ""),
            size,
            f"{video['fps']:.0f}" if video else "-",
            _rate(video.get("bitrate_bps")),
            audio.get("codec", "-") + (" muted" if audio.get("muted") else ""),
        )
    return table
