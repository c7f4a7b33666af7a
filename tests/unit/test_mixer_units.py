"""The mixer's sans-I/O pieces: layout geometry, audio mixing and limiting, compositing, the
codec/packetiser adapter, and the worker driven without sockets."""

from __future__ import annotations

import fractions
import itertools
import threading
import time
from collections.abc import Callable

import av
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from gateway.mixer import codecs as codecs_module
from gateway.mixer import halve as halve_module
from gateway.mixer import opus as opus_module
from gateway.mixer.audio_mix import (
    AudioControl,
    AudioMixer,
    InputBuffer,
    Limiter,
    MixMinus,
    to_s16,
)
from gateway.mixer.codecs import (
    AudioDecoder,
    OpusEncoder,
    VideoDecoder,
    VideoEncoder,
    Vp8Packetizer,
    packetize_h264,
)
from gateway.mixer.compositor import (
    Canvas,
    Compositor,
    Picture,
    rgb_to_yuv,
    scale_frame,
)
from gateway.mixer.halve import NATIVE as HALVE_NATIVE
from gateway.mixer.halve import halve_into
from gateway.mixer.layout import (
    LayoutSpec,
    Rect,
    Region,
    compute_layout,
    fit_rect,
    format_colour,
    grid_shape,
    parse_colour,
)
from gateway.mixer.planes import plane_views
from gateway.mixer.program import ProgramWorker, RenditionSpec
from gateway.mixer.swscale import load as load_swscale
from relay.media.frames import EncodedFrame
from relay.media.keyframes import is_keyframe


def ids(n: int) -> list[str]:
    return [f"a{i}" for i in range(n)]


# -- layout -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "shape"),
    [(0, (0, 0)), (1, (1, 1)), (2, (2, 1)), (3, (2, 2)), (4, (2, 2)), (5, (3, 2)), (9, (3, 3))],
)
def test_grid_shape(n: int, shape: tuple[int, int]) -> None:
    assert grid_shape(n) == shape


def test_grid_tiles_cover_canvas_with_empty_slots() -> None:
    tiles = compute_layout(LayoutSpec(), ids(3), 1280, 720)
    assert [t.anchor_id for t in tiles] == ["a0", "a1", "a2", None]
    assert tiles[0].rect == Rect(0, 0, 640, 360)
    assert tiles[1].rect == Rect(640, 0, 640, 360)
    assert tiles[2].rect == Rect(0, 360, 640, 360)
    assert tiles[3].rect == Rect(640, 360, 640, 360)
    assert compute_layout(LayoutSpec(), [], 1280, 720) == []
    # one anchor fills the canvas; every coordinate is even for 4:2:0
    (only,) = compute_layout(LayoutSpec(), ids(1), 1280, 720)
    assert only.rect == Rect(0, 0, 1280, 720)
    for n in range(1, 10):
        for t in compute_layout(LayoutSpec(), ids(n), 1280, 720):
            assert all(v % 2 == 0 for v in (t.rect.x, t.rect.y, t.rect.w, t.rect.h))
            assert t.rect.x + t.rect.w <= 1280 and t.rect.y + t.rect.h <= 720


def test_speaker_layout_big_plus_strip() -> None:
    tiles = compute_layout(LayoutSpec(mode="speaker", speaker="a2"), ids(3), 1280, 720)
    main = next(t for t in tiles if t.anchor_id == "a2")
    assert main.rect == Rect(0, 0, 1280, 540)
    strip = [t for t in tiles if t.anchor_id != "a2"]
    assert [t.anchor_id for t in strip] == ["a0", "a1"]
    assert all(t.rect.y == 540 and t.rect.h == 180 and t.z > main.z for t in strip)
    # unknown speaker: the first anchor
    tiles = compute_layout(LayoutSpec(mode="speaker", speaker="gone"), ids(2), 1280, 720)
    assert tiles[0].anchor_id == "a0" and tiles[0].rect.h == 540


def test_pip_layout_insets_on_top() -> None:
    tiles = compute_layout(LayoutSpec(mode="pip"), ids(3), 1280, 720)
    assert tiles[0].anchor_id == "a0" and tiles[0].rect == Rect(0, 0, 1280, 720)
    insets = tiles[1:]
    assert [t.z for t in insets] == [1, 2]
    for t in insets:
        assert t.rect.w == 320 and t.rect.h == 180
        assert t.rect.x + t.rect.w <= 1280 and t.rect.y + t.rect.h <= 720
    assert insets[0].rect.x > insets[1].rect.x  # right to left


def test_custom_regions_z_order_and_unknown_anchors() -> None:
    spec = LayoutSpec(
        mode="custom",
        regions=(
            ("a1", Region(0.5, 0.5, 0.5, 0.5, z=3)),
            ("a0", Region(0, 0, 1, 1, z=0)),
            ("ghost", Region(0, 0, 0.1, 0.1, z=9)),
        ),
    )
    tiles = compute_layout(spec, ids(2), 1280, 720)
    assert [t.anchor_id for t in tiles] == ["a0", "a1"]  # back to front
    assert tiles[1].rect == Rect(640, 360, 640, 360)


def test_fit_rect_keeps_aspect() -> None:
    box = Rect(0, 0, 640, 360)
    assert fit_rect(1280, 720, box) == box
    portrait = fit_rect(720, 1280, box)  # pillarbox
    assert portrait.h == 360 and abs(portrait.w - 202) <= 2 and portrait.x > 0
    wide = fit_rect(1920, 600, box)  # letterbox
    assert wide.w == 640 and wide.h < 360 and wide.y > 0
    assert fit_rect(0, 0, box).w == 0


def test_colours() -> None:
    assert parse_colour("#ff8000") == (255, 128, 0)
    assert format_colour((255, 128, 0)) == "#ff8000"
    with pytest.raises(ValueError):
        parse_colour("red")
    assert rgb_to_yuv((0, 0, 0)) == (16, 128, 128)
    assert rgb_to_yuv((255, 255, 255)) == (235, 128, 128)


# -- audio --------------------------------------------------------------------------------
def tone(freq: float, n: int = 960, amp: float = 0.5, start: int = 0) -> np.ndarray:
    t = (np.arange(n) + start) / 48000
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mix_gain_mute_and_mix_minus() -> None:
    mixer = AudioMixer(960)
    blocks = {"a": tone(440), "b": tone(1000)}
    out = mixer.mix(blocks, {"a": AudioControl(gain=0.5), "b": AudioControl(muted=True)})
    assert np.allclose(out, tone(440) * 0.5, atol=1e-6)
    minus = AudioMixer(960).mix(blocks, {}, exclude=["a"])
    assert np.allclose(minus, tone(1000), atol=1e-6)


def test_mix_minus_is_everyone_else_with_own_limiters() -> None:
    blocks = {"a": tone(440), "b": tone(1000), "c": tone(2500)}
    controls = {"b": AudioControl(gain=0.5), "c": AudioControl(muted=True)}
    minus = MixMinus(960)
    out = minus.mix(blocks, controls, ["a", "b", "c"])
    assert np.allclose(out["a"], tone(1000) * 0.5, atol=1e-6)  # b at its gain; c muted
    assert np.allclose(out["b"], tone(440), atol=1e-6)
    assert np.allclose(out["c"], tone(440) + tone(1000) * 0.5, atol=1e-6)
    # the same as a full mix that excludes the anchor
    for anchor in blocks:
        ref = AudioMixer(960).mix(blocks, controls, exclude=[anchor])
        assert np.allclose(out[anchor], ref, atol=1e-6)
    # only the anchors asked for; loud sums limited per anchor, never clipping
    loud = {k: tone(f, amp=0.8) for k, f in (("a", 440), ("b", 445), ("c", 450))}
    out = minus.mix(loud, {}, ["c"])
    assert list(out) == ["c"] and np.abs(out["c"]).max() <= 0.98 + 1e-6
    assert minus.limiters["c"].engaged_blocks == 1 and minus.limiters["a"].engaged_blocks == 0
    minus.mix({"a": tone(440)}, {}, ["a"])
    assert set(minus.limiters) == {"a"}  # gone anchors' limiters are forgotten


def test_input_buffer_trims_a_standing_backlog_not_jitter() -> None:
    buf = InputBuffer(max_samples=9600, prebuffer=960, window=10)
    frame = tone(440, 960)
    # steady: one frame in, one out, with a frame of cushion; never trimmed
    buf.push(frame)
    for _ in range(30):
        buf.push(frame)
        buf.pop(960)
    assert buf.trimmed == 0 and len(buf) == 960
    # jitter: a frame a tick late, then two at once; the cushion covers it, nothing is trimmed
    for _ in range(3):
        buf.pop(960)  # nothing came this tick
        buf.push(np.tile(frame, 2))  # the late frame with the next one
        buf.pop(960)
        for _ in range(12):
            buf.push(frame)
            buf.pop(960)
    assert buf.trimmed == 0 and buf.underruns == 0 and len(buf) == 960
    # a hiccup: five frames arrive together and stay as delay... until the window ends
    buf.push(np.tile(frame, 5))
    levels = []
    for _ in range(20):
        buf.push(frame)
        buf.pop(960)
        levels.append(len(buf))
    assert max(levels) >= 5 * 960 and levels[-1] <= 2 * 960 and buf.trimmed >= 4 * 960
    assert buf.dropped == buf.trimmed


def test_limiter_never_clips_and_recovers() -> None:
    mixer = AudioMixer(960)
    loud = {k: tone(f, amp=0.8, start=0) for k, f in (("a", 440), ("b", 445), ("c", 450))}
    peaks = []
    for _ in range(10):
        out = mixer.mix(loud, {})
        peaks.append(np.abs(out).max())
        assert np.abs(to_s16(out).astype(np.int32)).max() < 32767
    assert max(peaks) <= 0.98 + 1e-6 and mixer.limiter.engaged_blocks >= 1
    # quiet again: the gain ramps back to unity, never jumping above the ceiling
    quiet = {"a": tone(440, amp=0.1)}
    for _ in range(40):
        out = mixer.mix(quiet, {})
        assert np.abs(out).max() <= 0.98
    assert mixer.limiter.gain == pytest.approx(1.0)


def test_limiter_unity_below_ceiling() -> None:
    lim = Limiter()
    block = tone(440, amp=0.5)
    assert np.array_equal(lim.process(block), block)


def test_input_buffer_prebuffers_bounds_and_pads() -> None:
    buf = InputBuffer(max_samples=4800, prebuffer=960)
    buf.push(tone(440, 480))
    assert not buf.pop(960).any()  # still pre-buffering: silence
    buf.push(tone(440, 960))
    got = buf.pop(960)
    assert got.any() and len(buf) == 480
    tail = buf.pop(960)  # underrun: padded with silence
    assert not tail[480:].any() and buf.underruns == 1
    buf.push(np.ones(10000, np.float32))
    assert len(buf) == 4800 and buf.dropped == 10000 - 4800


class _ConcatBuffer:
    """The input buffer as it was before its ring (a numpy array concatenated and sliced per
    frame): the model the ring must match sample for sample and count for count."""

    def __init__(self, max_samples: int, prebuffer: int, window: int) -> None:
        self.max, self.pre, self.window = max_samples, prebuffer, window
        self.buf = np.zeros(0, np.float32)
        self.started, self.pops, self.low = False, 0, None
        self.underruns = self.dropped = self.trimmed = 0

    def push(self, samples: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, samples])
        extra = self.buf.size - self.max
        if extra > 0:
            self.buf, self.dropped = self.buf[extra:], self.dropped + extra

    def pop(self, n: int) -> np.ndarray:
        if not self.started:
            if self.buf.size < self.pre:
                return np.zeros(n, np.float32)
            self.started = True
        out = np.zeros(n, np.float32)
        take = min(n, self.buf.size)
        out[:take], self.buf = self.buf[:take], self.buf[take:]
        if take < n:
            self.underruns += 1
            self.started, self.pops, self.low = False, 0, None
            return out
        self.low = self.buf.size if self.low is None else min(self.low, self.buf.size)
        self.pops += 1
        if self.pops >= self.window:
            excess = self.low - self.pre
            if excess > 0:
                self.buf = self.buf[excess:]
                self.trimmed += excess
                self.dropped += excess
            self.pops, self.low = 0, None
        return out


def test_input_buffer_ring_matches_the_concatenating_buffer_without_allocating() -> None:
    """Random bursts, gaps and overflows (wrapping the ring many times): every popped block and
    every counter equal the concatenating buffer's; and the block handed out is one kept array
    (no allocation per frame), as is the mixer's sum."""
    rng = np.random.default_rng(5)
    ring = InputBuffer(max_samples=4800, prebuffer=960, window=7)
    model = _ConcatBuffer(4800, 960, 7)
    first = ring.pop(960)
    model.pop(960)
    for i in range(3000):
        n = int(rng.choice([0, 0, 480, 960, 960, 1920, 2880, 6000]))
        if n:
            chunk = rng.standard_normal(n).astype(np.float32)
            ring.push(chunk)
            model.push(chunk)
        got, want = ring.pop(960), model.pop(960)
        assert np.array_equal(got, want), i
        assert got is first
        assert len(ring) == model.buf.size
    assert (ring.underruns, ring.dropped, ring.trimmed) == (
        model.underruns,
        model.dropped,
        model.trimmed,
    )
    assert ring.trimmed > 0 and ring.underruns > 0  # the sequence reached both paths
    mixer = AudioMixer(960)
    quiet = {"a": tone(440, amp=0.2), "b": tone(660, amp=0.2)}
    assert mixer.mix(quiet, {}) is mixer.mix(quiet, {})
    assert MixMinus(960).mix(quiet, {}, []) == {}  # nobody listens: nothing mixed


# -- compositor ---------------------------------------------------------------------------
def solid(rgb: tuple[int, int, int], w: int, h: int) -> object:
    c = Canvas(w, h)
    c.fill(rgb)
    return c.to_frame()


def test_compositor_places_tiles_keeps_aspect_and_placeholders() -> None:
    comp = Compositor(320, 180)
    tiles = compute_layout(LayoutSpec(), ["r", "g", "b"], 320, 180)
    pics = {
        "r": Picture(solid((255, 0, 0), 160, 90), 1),
        "g": Picture(solid((0, 255, 0), 90, 160), 1),  # portrait: pillarboxed
        "b": Picture(solid((0, 0, 255), 160, 90), 1, stale=True),  # placeholder
    }
    frame = comp.compose(tiles, pics, background=(0, 0, 0), empty=(128, 128, 128))
    rgb = frame.to_ndarray(format="rgb24").astype(int)

    def near(px: np.ndarray, ref: tuple[int, int, int]) -> bool:
        return bool(np.abs(px - np.array(ref)).max() < 40)

    assert near(rgb[45, 80], (255, 0, 0))
    assert near(rgb[45, 240], (0, 255, 0))
    assert near(rgb[45, 165], (0, 0, 0))  # pillarbox bars: background
    assert near(rgb[135, 80], (128, 128, 128))  # stale anchor: placeholder
    assert near(rgb[135, 240], (128, 128, 128))  # empty slot


def test_compositor_repaints_only_changes_yet_matches_a_fresh_canvas() -> None:
    """Skipped background fills and unchanged tiles never leave stale pixels: after every
    step (new pictures, a frozen one, a stall, layout switches with overlaps, a leave) the
    canvas equals what a fresh compositor draws."""
    w, h = 320, 180
    comp = Compositor(w, h)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    serial = itertools.count(1)

    def pic(i: int, size: tuple[int, int] = (160, 90), stale: bool = False) -> Picture:
        return Picture(solid(colours[i % len(colours)], *size), next(serial), stale)

    grid, pip = LayoutSpec(), LayoutSpec(mode="pip")
    speaker = LayoutSpec(mode="speaker", background=(0, 0, 90))
    pics = {"a": pic(0), "b": pic(1, (90, 160)), "c": pic(2)}
    steps: list[tuple[LayoutSpec, list[str], dict[str, Picture]]] = []
    steps.append((grid, ["a", "b", "c"], dict(pics)))
    pics["a"] = pic(3)  # a new picture, b and c frozen
    steps.append((grid, ["a", "b", "c"], dict(pics)))
    steps.append((grid, ["a", "b", "c"], dict(pics)))  # nothing new at all
    pics["b"] = pic(4, (90, 160), stale=True)  # stalled: placeholder
    steps.append((grid, ["a", "b", "c"], dict(pics)))
    pics["b"] = pic(1, (90, 160))
    steps.append((pip, ["a", "b", "c"], dict(pics)))  # insets over the big picture
    pics["a"] = pic(2)  # under the insets: they are drawn again on top
    steps.append((pip, ["a", "b", "c"], dict(pics)))
    steps.append((speaker, ["a", "b", "c"], dict(pics)))
    pics["c"] = pic(0, (320, 180))  # same tile, another source size
    steps.append((speaker, ["a", "b", "c"], dict(pics)))
    del pics["b"]
    steps.append((grid, ["a", "c"], dict(pics)))
    for spec, ids, shown in steps:
        tiles = compute_layout(spec, ids, w, h)
        got = comp.compose(tiles, shown, spec.background, spec.empty).to_ndarray()
        fresh = Compositor(w, h).compose(tiles, shown, spec.background, spec.empty)
        assert np.array_equal(got, fresh.to_ndarray()), (spec.mode, ids)


def test_compositor_scales_into_the_canvas_as_pyav_would() -> None:
    """The direct path (libswscale through ctypes into the canvas) is found on this platform
    and draws the very pixels of the VideoReformatter + paste path, for a downscale, a
    pillarboxed portrait (too narrow for swscale's write blocks: it takes the copying path,
    so nothing spills into its neighbours) and a same-size copy."""
    assert load_swscale() is not None
    w, h = 320, 180
    rng = np.random.default_rng(7)

    def noise(fw: int, fh: int) -> object:
        c = Canvas(fw, fh)
        c.y[:] = rng.integers(16, 236, c.y.shape, dtype=np.uint8)
        c.u[:] = rng.integers(16, 241, c.u.shape, dtype=np.uint8)
        c.v[:] = rng.integers(16, 241, c.v.shape, dtype=np.uint8)
        return c.to_frame()

    pics = {
        "a": Picture(noise(640, 360), 1),
        "b": Picture(noise(200, 300), 1),
        "c": Picture(noise(160, 90), 1),
    }
    tiles = compute_layout(LayoutSpec(), ["a", "b", "c"], w, h)
    comp = Compositor(w, h)
    direct = comp.compose(tiles, pics, (0, 0, 0), (9, 9, 9)).to_ndarray()
    assert comp.direct_draws == 2  # "b" is 60 wide (not whole blocks): the copying path
    copied = Compositor(w, h, direct=False).compose(tiles, pics, (0, 0, 0), (9, 9, 9))
    assert np.array_equal(direct, copied.to_ndarray())


def _noise(fw: int, fh: int, seed: int = 11) -> object:
    rng = np.random.default_rng(seed)
    c = Canvas(fw, fh)
    for plane in (c.y, c.u, c.v):
        plane[:] = rng.integers(0, 256, plane.shape, dtype=np.uint8)
    return c.to_frame()


@pytest.mark.skipif(not HALVE_NATIVE, reason="the C halving is not built")
def test_halving_is_the_box_average_swscale_area_draws_and_stays_in_its_region() -> None:
    """The C halving equals a 2x2 box average and libswscale's area scale, pixel for pixel,
    writes its region only, and refuses what it cannot do exactly (odd corners, other sizes,
    other formats, planes smaller than the sides say)."""
    src = _noise(1280, 720)
    canvas = Canvas(1280, 720)
    canvas.fill((9, 9, 9))
    assert halve_into(src, canvas.frame, Rect(640, 360, 640, 360))
    for plane, region in zip(
        plane_views(src),
        (canvas.y[360:, 640:], canvas.u[180:, 320:], canvas.v[180:, 320:]),
        strict=True,
    ):
        p = plane.astype(np.uint16)
        box = (p[0::2, 0::2] + p[0::2, 1::2] + p[1::2, 0::2] + p[1::2, 1::2] + 2) >> 2
        assert np.array_equal(region, box)
    outside = Canvas(1280, 720)
    outside.fill((9, 9, 9))
    for got, ref in zip(
        (canvas.y, canvas.u, canvas.v), (outside.y, outside.u, outside.v), strict=True
    ):
        h, w = got.shape
        assert np.array_equal(got[: h // 2], ref[: h // 2])
        assert np.array_equal(got[:, : w // 2], ref[:, : w // 2])
    area = scale_frame(VideoReformatter(), src, 640, 360)
    assert halve_into(src, half := Canvas(640, 360).frame, Rect(0, 0, 640, 360))
    assert np.array_equal(half.to_ndarray(), area.to_ndarray())
    assert not halve_into(src, canvas.frame, Rect(641, 360, 640, 360))  # odd corner
    assert not halve_into(src, canvas.frame, Rect(0, 0, 640, 361))  # not an exact half
    assert not halve_into(src, canvas.frame, Rect(700, 400, 640, 360))  # past the canvas
    assert not halve_into(src.reformat(format="yuvj420p"), canvas.frame, Rect(0, 0, 640, 360))
    planes, kernel = src.planes, halve_module._halve
    with pytest.raises(ValueError):  # the C side checks every plane against its sides
        kernel.halve(
            planes, (1280, 640, 640), 1280, 1440, canvas.frame.planes, (1280, 640, 640), 0, 0
        )
    huge = (2635249153387078803, 640, 640)  # 7 times it wraps round to 5
    with pytest.raises(ValueError):  # a stride whose products overflow is refused, not used
        kernel.halve(planes, (1280, 640, 640), 1280, 720, canvas.frame.planes, huge, 0, 0)


@pytest.mark.skipif(not HALVE_NATIVE, reason="the C halving is not built")
def test_halving_kernels_give_the_same_bytes_at_every_width() -> None:
    """The AVX2 row kernel (where the CPU has it) and the SSE2 one write the 2x2 box average,
    the same bytes, at widths whose rows end mid-vector (the tails) and into odd offsets of a
    wider canvas; ``kernel()`` says which one runs."""
    kernel = halve_module._halve.kernel
    chosen = kernel()
    assert chosen in ("avx2", "sse2")
    names = ["sse2"] + (["avx2"] if kernel("avx2") == "avx2" else [])
    try:
        for w, h in ((4, 4), (36, 8), (64, 12), (68, 4), (124, 8), (132, 20), (1284, 16)):
            src = _noise(w, h, seed=w)
            want = []
            for plane in plane_views(src):
                p = plane.astype(np.uint16)
                want.append(
                    (p[0::2, 0::2] + p[0::2, 1::2] + p[1::2, 0::2] + p[1::2, 1::2] + 2) >> 2
                )
            for name in names:
                assert kernel(name) == name
                canvas = Canvas(w + 64, h + 8)
                canvas.fill((9, 9, 9))
                rect = Rect(34, 6, w // 2, h // 2)
                assert halve_into(src, canvas.frame, rect)
                got = (
                    canvas.y[6 : 6 + h // 2, 34 : 34 + w // 2],
                    canvas.u[3 : 3 + h // 4, 17 : 17 + w // 4],
                    canvas.v[3 : 3 + h // 4, 17 : 17 + w // 4],
                )
                for g, ref in zip(got, want, strict=True):
                    assert np.array_equal(g, ref), (w, h, name)
                assert (canvas.y[:, 34 + w // 2 :] == canvas.y[0, -1]).all()  # nothing past it
    finally:
        kernel(chosen)


@pytest.mark.skipif(not HALVE_NATIVE, reason="the C halving is not built")
def test_grid_of_exact_halves_is_drawn_by_halving_as_swscale_would() -> None:
    """Four 640x360 anchors on a 640x360 grid: every tile is an exact halving, drawn by the C
    kernel, and the canvas is the very one the libswscale path draws; the 320x180 rendition
    of that canvas is halved into a frame the encoder keeps."""
    ids = ["a", "b", "c", "d"]
    pics = {a: Picture(_noise(640, 360, seed=i), 1) for i, a in enumerate(ids)}
    tiles = compute_layout(LayoutSpec(), ids, 640, 360)
    comp = Compositor(640, 360)
    frame = comp.compose(tiles, pics, (0, 0, 0), (9, 9, 9))
    assert comp.direct_draws == 4
    copied = Compositor(640, 360, direct=False).compose(tiles, pics, (0, 0, 0), (9, 9, 9))
    assert np.array_equal(frame.to_ndarray(), copied.to_ndarray())
    enc = VideoEncoder("H264", 320, 180, 30, 300_000, 30)
    dec = VideoDecoder("H264")
    out = [f for data, _ in enc.encode(frame, keyframe=True) for f in dec.decode(data)]
    assert enc._half is not None and (enc._half.width, enc._half.height) == (320, 180)
    assert out and (out[0].width, out[0].height) == (320, 180)


# -- codecs and the aiortc packetiser hooks -------------------------------------------------
@pytest.mark.parametrize(("codec", "direct"), [("H264", True), ("H264", False), ("VP8", False)])
def test_encoder_keyframes_on_request_and_packetises(codec: str, direct: bool) -> None:
    """Both H264 paths (libx264 driven directly where built, PyAV's) and VP8."""
    enc = VideoEncoder(codec, 320, 180, 30, 300_000, 300, direct=direct)
    assert enc.direct == (direct and codecs_module.NATIVE_X264)
    dec = VideoDecoder(codec)
    frame = solid((255, 0, 0), 320, 180)
    keys = []
    for i in range(6):
        for data, key in enc.encode(frame, keyframe=(i == 4)):
            keys.append(key)
            assert key == is_keyframe(codec, data)
            payloads = enc.packetize(data)
            assert payloads and all(len(p) <= 1300 for p in payloads)
            assert dec.decode(data)
    assert keys[0] and keys[4] and not keys[1] and not keys[5]


def test_aiortc_packetisers_still_exist() -> None:
    big = b"\x00\x00\x00\x01\x65" + bytes(5000)
    assert len(packetize_h264(big)) >= 4  # FU-A fragments
    pack = Vp8Packetizer()
    assert len(pack(bytes(3000))) >= 3 and pack.picture_id == 1


def test_opus_roundtrip_48k_mono() -> None:
    enc, dec = OpusEncoder(), AudioDecoder()
    out = []
    for i in range(10):
        for p in enc.encode(tone(440, start=i * 960)):
            out.append(dec.decode(p))
    pcm = np.concatenate(out)
    assert pcm.size == 9600 and np.abs(pcm[2000:]).max() > 0.3


@pytest.mark.skipif(opus_module.load() is None, reason="libopus not reachable directly here")
def test_opus_called_directly_gives_the_pyav_paths_packets_and_samples() -> None:
    """libopus called directly (``gateway.mixer.opus``) is the library PyAV loaded, set as
    libavcodec's wrapper sets it: the same packets, and the same mono samples from a stereo
    anchor's packets (libopus's downmix; the multistream decoder rounds a hair differently)."""
    direct, pyav = OpusEncoder(), OpusEncoder(direct=False)
    assert direct.direct and not pyav.direct
    mixed = [
        tone(440, start=i * 960, amp=0.3) + tone(3000, start=i * 960, amp=0.1) for i in range(50)
    ]
    a = [p for block in mixed for p in direct.encode(block)]
    b = [p for block in mixed for p in pyav.encode(block)]
    assert a == b and len(a) == 50
    stereo = av.CodecContext.create("libopus", "w")
    stereo.sample_rate, stereo.layout, stereo.format = 48000, "stereo", "flt"
    stereo.bit_rate, stereo.time_base = 64000, fractions.Fraction(1, 48000)
    packets = []
    for i in range(50):
        left, right = tone(500, start=i * 960, amp=0.2), tone(900, start=i * 960, amp=0.2)
        frame = av.AudioFrame.from_ndarray(
            np.stack([left, right]).T.reshape(1, -1).copy(), format="flt", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48000, i * 960
        packets += [bytes(p) for p in stereo.encode(frame)]
    for stream in (a, packets):
        dec, ref = AudioDecoder(), AudioDecoder(direct=False)
        assert dec.direct and not ref.direct
        got = [dec.decode(p) for p in stream]  # each a new array: kept ones stay valid
        want = np.concatenate([ref.decode(p) for p in stream])
        assert np.concatenate(got).shape == want.shape == (len(stream) * 960,)
        assert np.abs(np.concatenate(got) - want).max() < 1e-4 and np.abs(want).max() > 0.15
    # an empty payload is no packet (libopus would conceal 120 ms for it)
    assert AudioDecoder().decode(b"").size == 0


# -- the worker without sockets -----------------------------------------------------------
def encoded_stream(codec: str, rgb: tuple[int, int, int], n: int) -> list[EncodedFrame]:
    enc = VideoEncoder(codec, 160, 90, 30, 200_000, 300)
    frames = []
    for i in range(n):
        for data, key in enc.encode(solid(rgb, 160, 90), keyframe=i == 0):
            frames.append(EncodedFrame("video", codec, i * 3000, (), data, key, time.monotonic()))
    return frames


def opus_stream(freq: float, n: int) -> list[EncodedFrame]:
    enc = OpusEncoder()
    out = []
    for i in range(n):
        for p in enc.encode(tone(freq, start=i * 960, amp=0.3)):
            out.append(EncodedFrame("audio", "opus", i * 960, (p,), p, True, time.monotonic()))
    return out


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` from the test's thread until it holds (a worker thread on a loaded machine
    may not run for a second or more: tests wait on what they need, not on a fixed time)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def on_the_clock(frames: list[EncodedFrame], rate: int, slack: float) -> float:
    """How far the frames' timestamps stray from the times they came out at. A tick is made at
    most 0.25 s behind the worker's clock (else skipped) and is out once its work is done, so a
    frame comes out between its tick's due time and that plus 0.25 s + the longest tick
    (``slack``): a clock that ran fast or slow strays by more than that."""
    first = frames[0]
    return max(
        abs((f.received_at - first.received_at) - (f.timestamp - first.timestamp) / rate)
        for f in frames
    ) - (0.25 + slack)


@pytest.mark.timeout(60)
def test_worker_mixes_two_inputs_on_its_clock() -> None:
    got: list[tuple[str | None, EncodedFrame]] = []
    lock = threading.Lock()

    def emit(r: str | None, f: EncodedFrame) -> None:
        with lock:
            got.append((r, f))

    def low_keyframes() -> int:
        with lock:
            return sum(f.keyframe for r, f in got if r == "low")

    asked: list[str] = []
    worker = ProgramWorker(
        video_codec="H264",
        audio=True,
        renditions=[
            RenditionSpec("main", 320, 180, 300_000),
            RenditionSpec("low", 160, 90, 100_000),
        ],
        fps=30,
        gop=300,
        audio_bitrate=48_000,
        input_frames=30,
        layout=lambda: LayoutSpec(placeholder_after=60),  # the video inputs come once, first
        controls=lambda: {"b": AudioControl(muted=True)},
        emit=emit,
    )
    worker.add_input("a", lambda: asked.append("a"))
    worker.add_input("b", lambda: asked.append("b"))
    assert asked == ["a", "b"]  # each input starts by asking for a keyframe
    # a delta frame before any keyframe is dropped and asks again
    vp8 = encoded_stream("VP8", (0, 255, 0), 20)
    h264 = encoded_stream("H264", (255, 0, 0), 20)
    tones = list(zip(opus_stream(440, 50), opus_stream(1000, 50), strict=True))
    worker.feed("b", vp8[1])
    assert asked[-1] == "b"
    worker.start()
    started = time.monotonic()
    try:
        for fa, fb in zip(h264, vp8, strict=True):
            worker.feed("a", fa)
            worker.feed("b", fb)
        # audio in real time, as anchors send it
        for fa, fb in tones:
            worker.feed("a", fa)
            worker.feed("b", fb)
            time.sleep(0.02)
        # the video inputs went quiet long ago: the worker still ticks, and keyframes on request
        assert wait_until(lambda: low_keyframes() >= 1, 20)
        worker.request_keyframe("low")
        assert wait_until(lambda: low_keyframes() >= 2, 20)
    finally:
        worker.stop()
        worker.join(5)
        elapsed = time.monotonic() - started
    assert not worker.alive and worker.error is None
    video = [(r, f) for r, f in got if f.kind == "video"]
    audio = [f for r, f in got if f.kind == "audio"]
    main = [f for r, f in video if r == "main"]
    low = [f for r, f in video if r == "low"]
    st = worker.stats
    # ~30 fps and 50 audio frames/s on the worker's clock, whatever the inputs do: never more
    # than the clock allows, every due tick made or (a starved thread) skipped, never piled up
    assert len(main) == len(low) == st.video_ticks <= elapsed * 30 + 2
    assert st.video_ticks + st.skipped_ticks <= elapsed * 30 + 2
    assert main[-1].timestamp // 3000 + 1 - len(main) <= st.skipped_ticks  # none lost unsaid
    assert main[0].keyframe and low[0].keyframe and sum(f.keyframe for f in low) >= 2
    steps = {b.timestamp - a.timestamp for a, b in itertools.pairwise(main)}
    assert all(d % 3000 == 0 and d > 0 for d in steps)  # on the 30 fps clock (skips jump)
    assert on_the_clock(main, 90000, st.tick_seconds_max) <= 0.05
    assert len(audio) <= elapsed * 50 + 2 and all(r is None for r, f in got if f.kind == "audio")
    steps = {b.timestamp - a.timestamp for a, b in itertools.pairwise(audio)}
    assert all(d % 960 == 0 and d > 0 for d in steps)
    assert on_the_clock(audio, 48000, st.tick_seconds_max) <= 0.05
    # the program picture: red left, green right
    dec = VideoDecoder("H264")
    pics = [p for f in main for p in dec.decode(f.data)]
    rgb = pics[-1].to_ndarray(format="rgb24").astype(int)
    assert rgb[90, 80, 0] > 180 and rgb[90, 80, 1] < 80
    assert rgb[90, 240, 1] > 180 and rgb[90, 240, 0] < 80
    # the audio: 440 Hz present, the muted 1000 Hz absent (the whole program: how much of it
    # is silence around the tones depends on when the worker got the core)
    adec = AudioDecoder()
    pcm = np.concatenate([adec.decode(f.data) for f in audio])
    mag = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    freqs = np.fft.rfftfreq(pcm.size, 1 / 48000)
    at = {f: mag[(freqs > f - 10) & (freqs < f + 10)].max() for f in (440, 1000)}
    assert at[440] > 20 * at[1000]


@pytest.mark.timeout(30)
def test_worker_encodes_only_the_renditions_someone_takes() -> None:
    """A rendition nobody takes is not encoded (nor, with none taken, composited); once taken
    its first frame is a keyframe, so the viewer who arrived can start at once."""
    got: list[tuple[str | None, EncodedFrame]] = []
    lock = threading.Lock()
    taken: set[str] = set()

    def emit(r: str | None, f: EncodedFrame) -> None:
        with lock:
            got.append((r, f))

    worker = ProgramWorker(
        video_codec="H264",
        audio=False,
        renditions=[
            RenditionSpec("main", 320, 180, 300_000),
            RenditionSpec("low", 160, 90, 100_000),
        ],
        fps=30,
        gop=300,
        audio_bitrate=48_000,
        input_frames=30,
        layout=LayoutSpec,
        controls=dict,
        emit=emit,
        rendition_wanted=lambda name: name in taken,
    )
    worker.add_input("a", lambda: None)
    stream = encoded_stream("H264", (255, 0, 0), 60)
    worker.start()

    def emitted(name: str) -> bool:
        with lock:
            return any(r == name for r, _ in got)

    def decoded() -> bool:
        return worker.stats.decoded_frames >= 15

    def run(
        frames: list[EncodedFrame], until: Callable[[], bool], take: str | None = None
    ) -> list[tuple[str | None, EncodedFrame]]:
        """Take ``take`` (from now on: what came before is cleared first), feed ``frames`` in
        real time, then wait for ``until`` (a starved worker thread may not have ticked at all
        meanwhile)."""
        with lock:
            got.clear()
            if take is not None:
                taken.add(take)
        for f in frames:
            worker.feed("a", f)
            time.sleep(1 / 30)
        assert wait_until(until, 20)
        with lock:
            return list(got)

    try:
        assert run(stream[:15], decoded) == []  # nobody: no composite, no encode (but decoded)
        first = run(stream[15:30], lambda: emitted("main"), take="main")
        assert {r for r, _ in first} == {"main"} and first[0][1].keyframe
        both = run(stream[30:45], lambda: emitted("low"), take="low")
        low = [f for r, f in both if r == "low"]
        assert low and low[0].keyframe
        assert not any(f.keyframe for r, f in both if r == "main")  # main went on as it was
    finally:
        worker.stop()
        worker.join(5)
    assert worker.error is None and worker.stats.unwatched_frames > 0


def spectrum_levels(frames: list[EncodedFrame], freqs: list[float]) -> dict[float, float]:
    """Peak magnitude near each frequency in the decoded Opus frames (all of them: how much
    silence comes before and after the tones depends on when the worker thread got a core)."""
    dec = AudioDecoder()
    pcm = np.concatenate([dec.decode(f.data) for f in frames])
    mag = np.abs(np.fft.rfft(pcm * np.hanning(pcm.size)))
    bins = np.fft.rfftfreq(pcm.size, 1 / 48000)
    return {f: float(mag[(bins > f - 10) & (bins < f + 10)].max()) for f in freqs}


@pytest.mark.timeout(30)
def test_worker_mixminus_is_everyone_else_per_listened_anchor() -> None:
    """Each anchor's mix-minus carries the others' tones (gain and mute applied), never its own;
    it is encoded only for anchors someone listens to, and the program audio is unchanged."""
    program: list[EncodedFrame] = []
    minus: dict[str, list[EncodedFrame]] = {}
    lock = threading.Lock()

    def emit(r: str | None, f: EncodedFrame) -> None:
        with lock:
            program.append(f)

    def emit_mixminus(anchor: str, f: EncodedFrame) -> None:
        with lock:
            minus.setdefault(anchor, []).append(f)

    worker = ProgramWorker(
        video_codec=None,  # audio only: no video ticks
        audio=True,
        renditions=[RenditionSpec("main", 320, 180, 300_000)],
        fps=30,
        gop=300,
        audio_bitrate=48_000,
        input_frames=30,
        layout=LayoutSpec,
        controls=lambda: {"c": AudioControl(muted=True)},
        emit=emit,
        emit_mixminus=emit_mixminus,
        mixminus_wanted=lambda anchor: anchor != "b",
    )
    tones = {"a": 440.0, "b": 1000.0, "c": 2500.0}
    for aid in tones:
        worker.add_input(aid, lambda: None)
    streams = {aid: opus_stream(f, 60) for aid, f in tones.items()}
    worker.start()
    try:
        for i in range(60):
            for aid in tones:
                worker.feed(aid, streams[aid][i])
            time.sleep(0.02)
        time.sleep(0.1)
    finally:
        worker.stop()
        worker.join(5)
    assert not worker.alive and worker.error is None
    assert set(minus) == {"a", "c"}  # nobody listens to b's: not encoded
    assert worker.stats.mixminus_frames == len(minus["a"]) + len(minus["c"])
    assert abs(len(minus["a"]) - len(program)) <= 1
    freqs = list(tones.values())
    a = spectrum_levels(minus["a"], freqs)
    assert a[1000.0] > 20 * a[440.0]  # b in, a itself out
    assert a[1000.0] > 20 * a[2500.0]  # c is muted in every mix
    c = spectrum_levels(minus["c"], freqs)
    assert c[440.0] > 0.3 * c[1000.0] and c[1000.0] > 0.3 * c[440.0]  # a and b
    assert c[440.0] > 20 * c[2500.0]  # not c itself
    prog = spectrum_levels(program, freqs)
    assert prog[440.0] > 0.3 * prog[1000.0] and prog[440.0] > 20 * prog[2500.0]


@pytest.mark.timeout(30)
def test_worker_reports_its_death() -> None:
    """An exception in the worker thread ends it, is kept in ``error`` and reported once."""
    reported: list[BaseException] = []
    died = threading.Event()

    def broken_layout() -> LayoutSpec:
        raise ValueError("layout exploded")

    def on_error(exc: BaseException) -> None:
        reported.append(exc)
        died.set()

    worker = ProgramWorker(
        video_codec="H264",
        audio=False,
        renditions=[RenditionSpec("main", 160, 90, 100_000)],
        fps=30,
        gop=300,
        audio_bitrate=48_000,
        input_frames=30,
        layout=broken_layout,
        controls=dict,
        emit=lambda r, f: None,
        on_error=on_error,
    )
    worker.start()
    assert died.wait(5)
    worker.join(5)
    assert not worker.alive and isinstance(worker.error, ValueError)
    assert reported == [worker.error]
