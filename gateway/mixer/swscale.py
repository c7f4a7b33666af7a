"""libswscale called directly (ctypes) to scale a yuv420p picture into a region of another.

PyAV's ``VideoReformatter`` always hands back a newly allocated frame, so drawing a tile cost
an allocation, numpy views and a copy into the canvas on top of the scale itself (BENCHMARKS.md,
"Code figures"). ``sws_scale`` writes to any plane
pointers: the tile is scaled straight into the canvas. Only the long-stable public API is used
(``sws_getCachedContext``, ``sws_scale``, ``sws_freeContext``), on the very library PyAV has
loaded, with the flags PyAV passes, so the pixels are the same as the ``VideoReformatter``
path (a test checks it). Where that library cannot be found (no ``/proc/self/maps``), ``load``
returns None and the compositor keeps the PyAV path.

swscale's SIMD output writes whole blocks: a row whose width is not a multiple of the block
runs up to 7 bytes past its end here (x86-64, AVX2), which in a canvas is the neighbour's
picture. ``load`` measures that block on the machine it runs on (scales into guarded rows
once) and ``RegionScaler.scale`` takes only regions whose luma and chroma widths are whole
blocks (640 x 360 tiles are); the rest go the copying way.
"""

from __future__ import annotations

import ctypes
from typing import Any

import av.video.reformatter  # noqa: F401  (loads libswscale into the process)

from .layout import Rect

AV_PIX_FMT_YUV420P = 0
SWS_AREA = 0x20  # the interpolation ``compositor.scale_frame`` asks PyAV for

_Ptrs = ctypes.c_void_p * 4
_Ints = ctypes.c_int * 4


def find_loaded(name: str) -> str | None:
    """The path of the shared library ``name`` this process has mapped (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if f"/lib{name}" in path and ".so" in path:
                    return path
    except OSError:
        return None
    return None


class Swscale:
    """The loaded libswscale's entry points (``load()`` makes one per process); ``block``:
    region widths must be a multiple of it (luma and chroma), 0 if no width is safe."""

    block = 0

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        lib.sws_getCachedContext.restype = ctypes.c_void_p
        lib.sws_getCachedContext.argtypes = (
            [ctypes.c_void_p] + [ctypes.c_int] * 7 + [ctypes.c_void_p] * 3
        )
        lib.sws_scale.restype = ctypes.c_int
        lib.sws_scale.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.sws_freeContext.restype = None
        lib.sws_freeContext.argtypes = [ctypes.c_void_p]
        self.lib = lib


_loaded: list[Swscale | None] = []


def load() -> Swscale | None:
    """The process's libswscale, or None where it cannot be reached this way or no region
    width is safe to write straight into."""
    if not _loaded:
        path = find_loaded("swscale")
        try:
            sws = Swscale(path) if path else None
        except (OSError, AttributeError):
            sws = None
        if sws is not None:
            sws.block = _measure_block(sws)
        _loaded.append(sws if sws is not None and sws.block else None)
    return _loaded[0]


def _measure_block(sws: Swscale) -> int:
    """The smallest power of two (16..128) such that scaling to any width that is a multiple
    of it, from a few source sizes, writes nothing outside the region; 0 if none is."""
    import av
    import numpy as np

    from .planes import plane_views

    sentinel = 7
    target = av.VideoFrame(640, 32, "yuv420p")
    planes = plane_views(target)
    sources = []
    for w, h in ((320, 180), (200, 300), (96, 54)):
        src = av.VideoFrame(w, h, "yuv420p")
        for plane in plane_views(src):
            plane[:] = (np.arange(plane.size, dtype=np.uint32) * 37 % 200 + 20).reshape(plane.shape)
        sources.append(src)
    bad = []
    for width in range(2, 258, 2):
        for src in sources:
            for plane in planes:
                plane[:] = sentinel
            scaler = RegionScaler(sws, target, block=2)
            ok = scaler.scale(src, Rect(64, 8, width, 16))
            scaler.close()
            y, u, v = planes
            outside = (
                not ok
                or (y[:8] != sentinel).any()
                or (y[24:] != sentinel).any()
                or (y[:, :64] != sentinel).any()
                or (y[:, 64 + width :] != sentinel).any()
                or any((c[:, 32 + width // 2 :] != sentinel).any() for c in (u, v))
                or any((c[:, :32] != sentinel).any() for c in (u, v))
            )
            if outside:
                bad.append(width)
                break
    for block in (16, 32, 64, 128):
        if all(w % block for w in bad):
            return block
    return 0


class RegionScaler:
    """One source's scaler into regions of one yuv420p ``target`` frame (kept while the
    source's size and the region's size stay, like a kept ``VideoReformatter``). Single
    threaded: libswscale's default, so its work stays on the caller's thread."""

    def __init__(self, sws: Swscale, target: Any, *, block: int | None = None) -> None:
        self._lib = sws.lib
        self._block = sws.block if block is None else block
        self._ctx: int | None = None
        planes = target.planes
        self._dst = [int(p.buffer_ptr) for p in planes[:3]]
        self._dst_stride = _Ints(*(p.line_size for p in planes[:3]), 0)
        self._w, self._h = target.width, target.height

    def scale(self, frame: Any, rect: Rect) -> bool:
        """Draw ``frame`` (yuv420p) scaled to ``rect`` (even, inside the target, width a whole
        number of blocks); False when this path cannot: the caller falls back."""
        if (
            not self._block
            or rect.w % self._block
            or frame.format.name != "yuv420p"
            or rect.x % 2
            or rect.y % 2
            or rect.w % 2
            or rect.h % 2
            or rect.w <= 0
            or rect.h <= 0
            or rect.x < 0
            or rect.y < 0
            or rect.x + rect.w > self._w
            or rect.y + rect.h > self._h
        ):
            return False
        ctx = self._lib.sws_getCachedContext(
            self._ctx,
            frame.width,
            frame.height,
            AV_PIX_FMT_YUV420P,
            rect.w,
            rect.h,
            AV_PIX_FMT_YUV420P,
            SWS_AREA,
            None,
            None,
            None,
        )
        if not ctx:
            self._ctx = None  # the old context was freed by the failed call
            return False
        self._ctx = ctx
        src = frame.planes
        ys = self._dst_stride[0]
        cs_u, cs_v = self._dst_stride[1], self._dst_stride[2]
        cx, cy = rect.x // 2, rect.y // 2
        dst = _Ptrs(
            self._dst[0] + rect.y * ys + rect.x,
            self._dst[1] + cy * cs_u + cx,
            self._dst[2] + cy * cs_v + cx,
            None,
        )
        done = self._lib.sws_scale(
            ctx,
            _Ptrs(src[0].buffer_ptr, src[1].buffer_ptr, src[2].buffer_ptr, None),
            _Ints(src[0].line_size, src[1].line_size, src[2].line_size, 0),
            0,
            frame.height,
            dst,
            self._dst_stride,
        )
        return bool(done == rect.h)

    def close(self) -> None:
        if self._ctx:
            self._lib.sws_freeContext(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()
