"""Exact 2:1 downscales of yuv420p pictures, in C when built (``_halve.c``).

The mixer's commonest scale halves: 1280x720 anchors into the 640x360 tiles of a 2x2 grid on a
1280x720 canvas, and that canvas into the 640x360 rendition. A 2x2 box average (what an area filter
computes for an exact halving) costs a fraction of libswscale's generic path per tile
(BENCHMARKS.md, "Code figures"); with AVX2 (chosen at import where the CPU has it) about 0.6 of
the SSE2 kernel's time. Where the extension is not built, ``halve_into`` says False and callers
keep libswscale.
"""

from __future__ import annotations

from typing import Any

from .layout import Rect

try:
    from . import _halve
except ImportError:  # built without a C compiler: libswscale does every scale
    _halve = None  # type: ignore[assignment]

NATIVE = _halve is not None


def can_halve(src: Any, rect: Rect) -> bool:
    """``src`` (an ``av.VideoFrame``) is yuv420p and exactly twice ``rect``'s size, with sides
    the kernel takes (multiples of 4, an even corner)."""
    return (
        _halve is not None
        and src.width == 2 * rect.w
        and src.height == 2 * rect.h
        and src.width % 4 == 0
        and src.height % 4 == 0
        and rect.x % 2 == 0
        and rect.y % 2 == 0
        and rect.x >= 0
        and rect.y >= 0
        and src.format.name == "yuv420p"
    )


def halve_into(src: Any, dst: Any, rect: Rect) -> bool:
    """Average ``src``'s 2x2 blocks into ``rect`` of ``dst`` (both yuv420p ``av.VideoFrame``s;
    ``rect`` inside ``dst``). False, with nothing written, where ``can_halve`` says no."""
    if not can_halve(src, rect) or dst.format.name != "yuv420p":
        return False
    if rect.x + rect.w > dst.width or rect.y + rect.h > dst.height:
        return False
    sp, dp = src.planes, dst.planes
    _halve.halve(
        sp,
        (sp[0].line_size, sp[1].line_size, sp[2].line_size),
        src.width,
        src.height,
        dp,
        (dp[0].line_size, dp[1].line_size, dp[2].line_size),
        rect.x,
        rect.y,
    )
    return True
