"""Video compositing: decoded anchor pictures scaled (swscale, aspect kept) onto a YUV canvas.

Synchronous and socket-free; the program worker calls it once per output tick. Pictures that did
not change since the last tick are not scaled again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from .layout import Rect, Rgb, Tile, fit_rect

Plane = npt.NDArray[np.uint8]


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
    """A yuv420p canvas with plane views."""

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError("canvas sides must be even")
        self.width, self.height = width, height
        self.data: Plane = np.zeros((height * 3 // 2, width), np.uint8)
        self.y, self.u, self.v = split_planes(self.data, width, height)

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
        return av.VideoFrame.from_ndarray(self.data, format="yuv420p")


def split_planes(data: Plane, w: int, h: int) -> tuple[Plane, Plane, Plane]:
    """Views of the Y, U and V planes of a packed yuv420p array (PyAV's ndarray layout: the
    planes one after the other, whatever the row boundaries)."""
    flat = data.reshape(-1)
    ys, cs = w * h, (w // 2) * (h // 2)
    return (
        flat[:ys].reshape(h, w),
        flat[ys : ys + cs].reshape(h // 2, w // 2),
        flat[ys + cs : ys + 2 * cs].reshape(h // 2, w // 2),
    )


def scale_planes(frame: Any, w: int, h: int) -> tuple[Plane, Plane, Plane]:
    """swscale ``frame`` to ``w`` x ``h`` yuv420p and split its planes (area averaging: half
    the cost of swscale's default bicubic on this machine, and clean when shrinking)."""
    arr = frame.reformat(width=w, height=h, format="yuv420p", interpolation="AREA").to_ndarray()
    return split_planes(arr, w, h)


class Compositor:
    """Draws tiles (back to front) onto one canvas per call."""

    def __init__(self, width: int, height: int) -> None:
        self.canvas = Canvas(width, height)
        self._cache: dict[str, tuple[int, Rect, tuple[Plane, Plane, Plane]]] = {}

    def compose(
        self,
        tiles: list[Tile],
        pictures: Mapping[str, Picture],
        background: Rgb,
        empty: Rgb,
    ) -> Any:
        """The program picture as an ``av.VideoFrame`` (yuv420p)."""
        c = self.canvas
        c.fill(background)
        used: set[str] = set()
        for tile in tiles:
            pic = pictures.get(tile.anchor_id) if tile.anchor_id is not None else None
            if pic is None or pic.stale:
                c.fill(empty, tile.rect)
                continue
            fit = fit_rect(pic.frame.width, pic.frame.height, tile.rect)
            if fit.w <= 0 or fit.h <= 0:
                continue
            assert tile.anchor_id is not None
            used.add(tile.anchor_id)
            cached = self._cache.get(tile.anchor_id)
            if cached is not None and cached[0] == pic.serial and cached[1] == fit:
                planes = cached[2]
            else:
                planes = scale_planes(pic.frame, fit.w, fit.h)
                self._cache[tile.anchor_id] = (pic.serial, fit, planes)
            c.paste(fit, planes)
        for gone in set(self._cache) - used:
            del self._cache[gone]
        return c.to_frame()
