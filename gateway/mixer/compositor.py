"""Video compositing: decoded anchor pictures scaled (swscale, aspect kept) onto a YUV canvas.

Synchronous and socket-free; the program worker calls it once per output tick. Pictures that did
not change since the last tick are not scaled again; where tiles do not overlap, each new
picture is scaled straight into the canvas (``halve`` for an exact halving, the grid's usual
case, else ``swscale.RegionScaler``), with no copy in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import av
from av.video.reformatter import VideoReformatter

from .halve import halve_into
from .layout import Rect, Rgb, Tile, fit_rect
from .planes import Plane, plane_views
from .swscale import RegionScaler, load


def rgb_to_yuv(rgb: Rgb) -> tuple[int, int, int]:
    """BT.601 limited range, as x264/libvpx expect for yuv420p by default."""
    r, g, b = rgb
    y = 16 + (65.738 * r + 129.057 * g + 25.064 * b) / 256
    u = 128 + (-37.945 * r - 74.494 * g + 112.439 * b) / 256
    v = 128 + (112.439 * r - 94.154 * g - 18.285 * b) / 256
    return (
        round(min(max(y, 0), 255)),
        round(min(max(u, 0), 255)),
        round(min(max(v, 0), 255)),
    )


@dataclass(slots=True)
class Picture:
    """An anchor's latest decoded picture; ``serial`` changes whenever the picture does."""

    frame: Any  # av.VideoFrame
    serial: int
    stale: bool = False  # stalled past the placeholder timeout: draw the placeholder


class Canvas:
    """A yuv420p canvas: one ``av.VideoFrame`` allocated once, drawn into through numpy views of
    its planes (no per-tick allocation, no copy into a fresh frame). ``to_frame`` hands out that
    same frame: whoever takes it must be done with it before the canvas is drawn again (the
    encoders are: libx264/libvpx copy the picture before ``encode`` returns)."""

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError("canvas sides must be even")
        self.width, self.height = width, height
        self.frame: Any = av.VideoFrame(width, height, "yuv420p")
        self.y, self.u, self.v = plane_views(self.frame)

    def fill(self, rgb: Rgb, rect: Rect | None = None) -> None:
        y, u, v = rgb_to_yuv(rgb)
        if rect is None:
            self.y[:] = y
            self.u[:] = u
            self.v[:] = v
            return
        if rect.w <= 0 or rect.h <= 0:
            return
        self.y[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w] = y
        cy, cx, ch, cw = rect.y // 2, rect.x // 2, rect.h // 2, rect.w // 2
        self.u[cy : cy + ch, cx : cx + cw] = u
        self.v[cy : cy + ch, cx : cx + cw] = v

    def paste(self, rect: Rect, planes: tuple[Plane, Plane, Plane]) -> None:
        py, pu, pv = planes
        self.y[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w] = py
        cy, cx, ch, cw = rect.y // 2, rect.x // 2, rect.h // 2, rect.w // 2
        self.u[cy : cy + ch, cx : cx + cw] = pu
        self.v[cy : cy + ch, cx : cx + cw] = pv

    def to_frame(self) -> Any:
        return self.frame


def scale_frame(scaler: Any, frame: Any, w: int, h: int) -> Any:
    """swscale ``frame`` to ``w`` x ``h`` yuv420p with ``scaler`` (an ``av.video.reformatter.
    VideoReformatter`` kept from call to call: ``frame.reformat`` would build a new swscale
    context, and spawn its slice threads, for every new frame). One thread: the caller's, whose
    CPU time is what the mixer accounts. Area averaging: half the cost of swscale's default
    bicubic on this machine, and clean when shrinking. A frame already of that size and format
    comes back as it is."""
    return scaler.reformat(
        frame, width=w, height=h, format="yuv420p", interpolation="AREA", threads=1
    )


def scale_planes(scaler: Any, frame: Any, w: int, h: int) -> tuple[Plane, Plane, Plane]:
    """``scale_frame``, as views of the scaled planes."""
    return plane_views(scale_frame(scaler, frame, w, h))


@dataclass(frozen=True, slots=True)
class _Draw:
    """One step of a composite: an anchor's picture (``serial``) or a placeholder fill."""

    rect: Rect
    anchor_id: str | None  # None: the placeholder colour
    serial: int = 0


def _overlap(a: Rect, b: Rect) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


class Compositor:
    """Draws tiles (back to front) onto one canvas per call.

    Repaints only what changed: the background only when the geometry (tile rects, which are
    placeholders, colours) changed since the last call, and, when no two tiles overlap, only
    the tiles whose picture changed. Each anchor's picture is scaled once per new picture:
    straight into the canvas when no two tiles overlap, else into a kept copy that is pasted
    again whenever a tile below it is redrawn."""

    def __init__(self, width: int, height: int, *, direct: bool = True) -> None:
        self.canvas = Canvas(width, height)
        self._cache: dict[str, tuple[int, Rect, tuple[Plane, Plane, Plane]]] = {}
        self._scalers: dict[str, Any] = {}  # anchor id -> its VideoReformatter
        self._direct = direct
        self._sws = load() if direct else None
        self._region: dict[str, RegionScaler] = {}  # anchor id -> its scaler into the canvas
        self.direct_draws = 0  # pictures scaled straight into the canvas
        self._geometry: tuple[object, ...] | None = None
        self._drawn: list[_Draw] = []

    def compose(
        self,
        tiles: list[Tile],
        pictures: Mapping[str, Picture],
        background: Rgb,
        empty: Rgb,
    ) -> Any:
        """The program picture as an ``av.VideoFrame`` (yuv420p; the canvas's own frame)."""
        c = self.canvas
        draws: list[_Draw] = []
        for tile in tiles:
            pic = pictures.get(tile.anchor_id) if tile.anchor_id is not None else None
            if pic is None or pic.stale:
                draws.append(_Draw(tile.rect, None))
                continue
            fit = fit_rect(pic.frame.width, pic.frame.height, tile.rect)
            if fit.w > 0 and fit.h > 0:
                draws.append(_Draw(fit, tile.anchor_id, pic.serial))
        geometry = (background, empty, tuple((d.rect, d.anchor_id) for d in draws))
        overlapping = any(
            _overlap(a.rect, b.rect) for i, a in enumerate(draws) for b in draws[i + 1 :]
        )
        if geometry != self._geometry:
            c.fill(background)
            previous: list[_Draw] = []
        else:
            previous = [] if overlapping else self._drawn
        for i, d in enumerate(draws):
            if i < len(previous) and previous[i] == d:
                continue  # the canvas already shows it
            if d.anchor_id is None:
                c.fill(empty, d.rect)
                continue
            pic = pictures[d.anchor_id]
            if not overlapping and self._draw_direct(d.anchor_id, pic, d.rect):
                continue
            c.paste(d.rect, self._scaled(d.anchor_id, pic, d.rect))
        used = {d.anchor_id for d in draws}
        for gone in [a for a in self._cache if a not in used]:
            del self._cache[gone]
        for gone in [a for a in self._scalers if a not in used]:
            del self._scalers[gone]
        for gone in [a for a in self._region if a not in used]:
            self._region.pop(gone).close()
        self._geometry, self._drawn = geometry, draws
        return c.to_frame()

    def _draw_direct(self, anchor_id: str, pic: Picture, fit: Rect) -> bool:
        """Scale ``pic`` straight into the canvas (an exact halving by ``halve``, the rest by
        libswscale); False where neither path is available."""
        drawn = self._direct and halve_into(pic.frame, self.canvas.frame, fit)
        if not drawn and self._sws is not None:
            scaler = self._region.get(anchor_id)
            if scaler is None:
                scaler = self._region[anchor_id] = RegionScaler(self._sws, self.canvas.frame)
            drawn = scaler.scale(pic.frame, fit)
        if drawn:
            self._cache.pop(anchor_id, None)  # a later overlapping layout scales it again
            self.direct_draws += 1
        return drawn

    def _scaled(self, anchor_id: str, pic: Picture, fit: Rect) -> tuple[Plane, Plane, Plane]:
        cached = self._cache.get(anchor_id)
        if cached is not None and cached[0] == pic.serial and cached[1] == fit:
            return cached[2]
        scaler = self._scalers.get(anchor_id)
        if scaler is None:
            scaler = self._scalers[anchor_id] = VideoReformatter()
        planes = scale_planes(scaler, pic.frame, fit.w, fit.h)
        self._cache[anchor_id] = (pic.serial, fit, planes)
        return planes
