"""Layout geometry: where each anchor's picture goes on the program canvas (pure functions).

A layout is a value (``LayoutSpec``); ``compute_layout`` turns it plus the live anchors (in join
order) into tiles in pixels, sorted by z-order (drawn back to front). ``fit_rect`` keeps a
source's aspect ratio inside a tile (letterbox / pillarbox). Every coordinate is even, so tiles
line up with the 4:2:0 chroma planes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

LayoutMode = Literal["grid", "speaker", "pip", "custom"]
Rgb = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Rect:
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True, slots=True)
class Region:
    """A custom region as fractions of the canvas (0..1) and its z-order (higher is on top)."""

    x: float
    y: float
    w: float
    h: float
    z: int = 0


@dataclass(frozen=True, slots=True)
class Tile:
    """One box on the canvas; ``anchor_id`` None is an empty slot (drawn as ``empty`` colour)."""

    anchor_id: str | None
    rect: Rect
    z: int = 0


@dataclass(frozen=True, slots=True)
class LayoutSpec:
    mode: LayoutMode = "grid"
    speaker: str | None = None  # speaker / pip: the big picture (default: first anchor)
    regions: tuple[tuple[str, Region], ...] = ()  # custom: anchor id -> region
    background: Rgb = (16, 16, 16)
    empty: Rgb = (40, 40, 40)  # empty grid slots and stalled anchors' placeholders
    placeholder_after: float = 2.0  # s without a picture before a tile shows a placeholder
    pip_scale: float = 0.25  # pip: inset size as a fraction of the canvas
    strip_fraction: float = 0.25  # speaker: height of the strip of the others


def _even(v: float) -> int:
    return max(0, round(v / 2.0) * 2)


def _rect(x: float, y: float, w: float, h: float, width: int, height: int) -> Rect:
    x0, y0 = min(_even(x), width), min(_even(y), height)
    x1, y1 = min(_even(x + w), width), min(_even(y + h), height)
    return Rect(x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def grid_shape(n: int) -> tuple[int, int]:
    """(columns, rows) of a grid for ``n`` tiles: as square as possible, wider than tall."""
    if n <= 0:
        return 0, 0
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return cols, rows


def _grid(anchors: Sequence[str], width: int, height: int, *, pad_slots: bool) -> list[Tile]:
    cols, rows = grid_shape(len(anchors))
    if cols == 0:
        return []
    cw, ch = width / cols, height / rows
    tiles: list[Tile] = []
    slots: list[str | None] = [*anchors]
    if pad_slots:
        slots += [None] * (cols * rows - len(anchors))
    for i, anchor in enumerate(slots):
        r, c = divmod(i, cols)
        tiles.append(Tile(anchor, _rect(c * cw, r * ch, cw, ch, width, height)))
    return tiles


def _speaker(spec: LayoutSpec, anchors: Sequence[str], width: int, height: int) -> list[Tile]:
    main = spec.speaker if spec.speaker in anchors else anchors[0]
    others = [a for a in anchors if a != main]
    if not others:
        return [Tile(main, Rect(0, 0, width, height))]
    strip_h = height * spec.strip_fraction
    tiles = [Tile(main, _rect(0, 0, width, height - strip_h, width, height))]
    n = max(len(others), 4)  # at least four slots so a strip tile is never huge
    sw = width / n
    x0 = (width - sw * len(others)) / 2
    for i, anchor in enumerate(others):
        tiles.append(
            Tile(anchor, _rect(x0 + i * sw, height - strip_h, sw, strip_h, width, height), 1)
        )
    return tiles


def _pip(spec: LayoutSpec, anchors: Sequence[str], width: int, height: int) -> list[Tile]:
    main = spec.speaker if spec.speaker in anchors else anchors[0]
    tiles = [Tile(main, Rect(0, 0, width, height))]
    iw, ih = width * spec.pip_scale, height * spec.pip_scale
    margin = min(width, height) * 0.03
    others = [a for a in anchors if a != main]
    for i, anchor in enumerate(others):
        # right to left along the bottom, then the next row up
        per_row = max(1, int((width - margin) // (iw + margin)))
        row, col = divmod(i, per_row)
        x = width - (col + 1) * (iw + margin)
        y = height - (row + 1) * (ih + margin)
        tiles.append(Tile(anchor, _rect(x, y, iw, ih, width, height), 1 + i))
    return tiles


def _custom(spec: LayoutSpec, anchors: Sequence[str], width: int, height: int) -> list[Tile]:
    live = set(anchors)
    tiles: list[Tile] = []
    for anchor, reg in spec.regions:
        if anchor not in live:
            continue
        rect = _rect(reg.x * width, reg.y * height, reg.w * width, reg.h * height, width, height)
        if rect.w > 0 and rect.h > 0:
            tiles.append(Tile(anchor, rect, reg.z))
    return tiles


def compute_layout(spec: LayoutSpec, anchors: Sequence[str], width: int, height: int) -> list[Tile]:
    """Tiles for ``anchors`` (join order) on a ``width`` x ``height`` canvas, back to front."""
    if not anchors:
        return []
    if spec.mode == "speaker":
        tiles = _speaker(spec, anchors, width, height)
    elif spec.mode == "pip":
        tiles = _pip(spec, anchors, width, height)
    elif spec.mode == "custom":
        tiles = _custom(spec, anchors, width, height)
    else:
        tiles = _grid(anchors, width, height, pad_slots=True)
    return sorted(tiles, key=lambda t: t.z)  # stable: equal z keeps layout order


def fit_rect(src_w: int, src_h: int, box: Rect) -> Rect:
    """The largest rect of the source's aspect ratio centred in ``box`` (even coordinates)."""
    if src_w <= 0 or src_h <= 0 or box.w <= 0 or box.h <= 0:
        return Rect(box.x, box.y, 0, 0)
    scale = min(box.w / src_w, box.h / src_h)
    w = min(box.w, max(2, _even(src_w * scale)))
    h = min(box.h, max(2, _even(src_h * scale)))
    x = box.x + _even((box.w - w) / 2)
    y = box.y + _even((box.h - h) / 2)
    return Rect(x, y, w, h)


def parse_colour(text: str) -> Rgb:
    """``#rrggbb`` -> (r, g, b); ValueError otherwise."""
    s = text.strip()
    if len(s) != 7 or not s.startswith("#"):
        raise ValueError(f"colour {text!r} is not #rrggbb")
    return int(s[1:3], 16), int(s[3:5], 16), int(s[5:7], 16)


def format_colour(rgb: Rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
