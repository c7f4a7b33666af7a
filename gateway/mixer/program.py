"""The program worker: decodes each anchor once, composites on a steady output clock, mixes the
audio, encodes once per rendition. Runs in its own thread; the event loop only hands it encoded
frames (``feed``) and receives encoded frames back through ``emit``.

Mix-minus: with ``emit_mixminus`` set, every audio tick also mixes, for each anchor, everyone
else's audio (same gains, mutes and a limiter of its own) and encodes it once to Opus for that
anchor (``emit_mixminus(anchor_id, frame)``), while ``mixminus_wanted(anchor_id)`` says someone
listens. Co-hosts hear each other through it without hearing themselves.

Renditions nobody takes: ``rendition_wanted(name)`` (a hub with no viewer, recorder, bridge or
edge pull) is not composited for or encoded, which is most of a mixed room's CPU (a 720p
libx264 encode costs several times a 360p one); the first frame after it is wanted again is a
keyframe. Decoding never stops: an anchor's decoder needs every frame since its last keyframe.

Timing: video ticks every 1/fps s and audio every 20 ms of a monotonic clock, whatever the inputs
do. At each video tick every anchor's queued frames are decoded and its latest picture is drawn;
an anchor that sent nothing keeps its last picture (a freeze) and after ``placeholder_after`` s
shows a placeholder. A stalled anchor never holds the program back.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from relay.media.frames import EncodedFrame
from relay.media.keyframes import is_keyframe

from .audio_mix import AudioMixer, InputBuffer, MixMinus, Samples
from .codecs import (
    AUDIO_FRAME,
    RATE,
    VIDEO_CLOCK,
    AudioDecoder,
    OpusEncoder,
    VideoDecoder,
    VideoEncoder,
)
from .compositor import Compositor, Picture
from .layout import LayoutSpec, Tile, compute_layout
from .specs import AudioControl
from .specs import RenditionSpec as RenditionSpec  # re-exported: its home moved to specs

log = logging.getLogger(__name__)

# (rendition name, frame); rendition None: the frame (audio) goes to every rendition
Emit = Callable[[str | None, EncodedFrame], None]
# (anchor id, frame): one anchor's mix-minus (everyone else's audio)
EmitMixMinus = Callable[[str, EncodedFrame], None]


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS (Linux, 15 bytes): /proc/PID/task/*/comm, top,
    perf and py-spy then tell the mixer's CPU from the event loop's."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


@dataclass(slots=True)
class WorkerStats:
    video_ticks: int = 0
    audio_ticks: int = 0
    late_ticks: int = 0
    skipped_ticks: int = 0
    decoded_frames: int = 0
    encoded_frames: int = 0
    keyframes: int = 0  # encoded keyframes, every rendition (each costs several P-frames)
    work_seconds: float = 0.0  # time spent decoding, compositing and encoding
    tick_seconds_max: float = 0.0
    cpu_seconds: float = 0.0  # the worker thread's CPU time
    encode_cpu_seconds: dict[str, float] = field(default_factory=dict)  # per rendition
    decode_cpu_seconds: float = 0.0  # every anchor's video decode
    composite_cpu_seconds: float = 0.0  # layout, scaling, pasting
    audio_cpu_seconds: float = 0.0  # Opus decode, resample, mix, Opus encode (mix-minus too)
    mixminus_frames: int = 0  # Opus frames encoded for anchors' mix-minus feeds
    unwatched_frames: int = 0  # rendition frames not encoded because nobody took them


@dataclass(eq=False)
class _Input:
    anchor_id: str
    request_keyframe: Callable[[], None]
    max_frames: int
    video: deque[EncodedFrame] = field(default_factory=deque)
    audio: deque[EncodedFrame] = field(default_factory=deque)
    waiting_keyframe: bool = True
    dropped: int = 0
    # worker-side state (touched by the worker thread only)
    decoder: VideoDecoder | None = None
    audio_decoder: AudioDecoder | None = None
    buffer: InputBuffer = field(default_factory=InputBuffer)
    mixminus_encoder: OpusEncoder | None = None  # everyone else's audio, for this anchor
    picture: Picture | None = None
    last_picture_at: float | None = None
    added_at: float = field(default_factory=time.monotonic)


class ProgramWorker:
    """One room's mixer. ``feed``/``add_input``/``remove_input``/``request_keyframe`` are safe to
    call from the event loop; everything PyAV runs in the worker thread."""

    def __init__(
        self,
        *,
        video_codec: str | None,
        audio: bool,
        renditions: list[RenditionSpec],
        fps: int,
        gop: int,
        audio_bitrate: int,
        input_frames: int,
        layout: Callable[[], LayoutSpec],
        controls: Callable[[], Mapping[str, AudioControl]],
        emit: Emit,
        emit_mixminus: EmitMixMinus | None = None,
        mixminus_wanted: Callable[[str], bool] = lambda anchor_id: True,
        rendition_wanted: Callable[[str], bool] = lambda name: True,
        on_error: Callable[[BaseException], None] | None = None,
        name: str = "mixer",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.video_codec = video_codec
        self.audio = audio
        self.renditions = renditions
        self.fps = fps
        self.gop = gop
        self.audio_bitrate = audio_bitrate
        self.input_frames = input_frames
        self._layout = layout
        self._controls = controls
        self._emit = emit
        self._emit_mixminus = emit_mixminus
        self._mixminus_wanted = mixminus_wanted
        self._rendition_wanted = rendition_wanted
        self._unwatched: set[str] = set()  # renditions skipped at the last tick (worker thread)
        self._on_error = on_error
        self._clock = clock
        self._lock = threading.Lock()
        self._inputs: dict[str, _Input] = {}
        self._keyframes: set[str] = {r.name for r in renditions}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stats = WorkerStats()
        self._serials = itertools.count(1)  # Picture.serial (worker thread only)
        # the last layout computed (worker thread only): the same spec and anchors give the
        # same tiles, so a steady room skips ``compute_layout`` on every tick
        self._tiles_key: tuple[LayoutSpec, tuple[str, ...]] | None = None
        self._tiles: list[Tile] = []
        self.error: BaseException | None = None

    # -- event-loop side ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish (it frees its codecs itself); ``join`` waits for it."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def add_input(self, anchor_id: str, request_keyframe: Callable[[], None]) -> None:
        with self._lock:
            if anchor_id not in self._inputs:
                self._inputs[anchor_id] = _Input(anchor_id, request_keyframe, self.input_frames)
        request_keyframe()

    def remove_input(self, anchor_id: str) -> None:
        with self._lock:
            self._inputs.pop(anchor_id, None)

    def input_ids(self) -> list[str]:
        with self._lock:
            return list(self._inputs)

    def feed(self, anchor_id: str, frame: EncodedFrame) -> None:
        """Queue an anchor's encoded frame (bounded: video drops to the next keyframe and asks
        for one, audio drops its oldest)."""
        ask = False
        with self._lock:
            inp = self._inputs.get(anchor_id)
            if inp is None:
                return
            if frame.kind == "video":
                if inp.waiting_keyframe:
                    if not frame.keyframe:
                        inp.dropped += 1
                        ask = True
                    else:
                        inp.waiting_keyframe = False
                if not inp.waiting_keyframe:
                    if len(inp.video) >= inp.max_frames:
                        inp.dropped += len(inp.video)
                        inp.video.clear()
                        inp.waiting_keyframe = not frame.keyframe
                        ask = not frame.keyframe
                    if not inp.waiting_keyframe:
                        inp.video.append(frame)
            else:
                if len(inp.audio) >= inp.max_frames * 2:
                    inp.audio.popleft()
                    inp.dropped += 1
                inp.audio.append(frame)
            request = inp.request_keyframe
        if ask:
            request()

    def request_keyframe(self, rendition: str | None = None) -> None:
        with self._lock:
            if rendition is None:
                self._keyframes.update(r.name for r in self.renditions)
            else:
                self._keyframes.add(rendition)

    # -- worker thread --------------------------------------------------------------------
    def _run(self) -> None:
        name_os_thread(self._thread.name)
        try:
            self._loop()
        except BaseException as exc:  # logged, then reported: the director restarts the mixer
            self.error = exc
            log.exception("mixer thread failed")
            if self._on_error is not None:
                try:
                    self._on_error(exc)
                except Exception:
                    log.exception("mixer failure callback failed")

    def _loop(self) -> None:
        main = self.renditions[0]
        compositor = Compositor(main.width, main.height)
        encoders = (
            {
                r.name: VideoEncoder(
                    self.video_codec, r.width, r.height, self.fps, r.video_bitrate, self.gop
                )
                for r in self.renditions
            }
            if self.video_codec
            else {}
        )
        opus = OpusEncoder(self.audio_bitrate) if self.audio else None
        audio_ticks = opus is not None or self._emit_mixminus is not None
        mixer = AudioMixer(AUDIO_FRAME)
        minus = MixMinus(AUDIO_FRAME)
        t0 = self._clock()
        cpu0 = time.thread_time()
        vt = at = 0
        video_step = 1.0 / self.fps
        audio_step = AUDIO_FRAME / RATE
        while not self._stop.is_set():
            next_v = t0 + vt * video_step if encoders else float("inf")
            next_a = t0 + at * audio_step if audio_ticks else float("inf")
            due = min(next_v, next_a)
            if due == float("inf"):
                self._stop.wait(0.1)
                continue
            now = self._clock()
            if due > now:
                self._stop.wait(due - now)
                continue
            if now - due > 0.25:  # far behind (machine overloaded): skip, never pile up
                skip_v = int((now - next_v) / video_step) if encoders else 0
                skip_a = int((now - next_a) / audio_step) if audio_ticks else 0
                vt += max(0, skip_v)
                at += max(0, skip_a)
                self.stats.skipped_ticks += max(0, skip_v)
                continue
            if now - due > video_step:
                self.stats.late_ticks += 1
            started = time.perf_counter()
            if next_a <= next_v and audio_ticks:
                c0 = time.thread_time()
                self._audio_tick(mixer, minus, opus, at * AUDIO_FRAME)
                self.stats.audio_cpu_seconds += time.thread_time() - c0
                at += 1
                self.stats.audio_ticks += 1
            else:
                self._video_tick(compositor, encoders, vt * (VIDEO_CLOCK // self.fps))
                vt += 1
                self.stats.video_ticks += 1
            spent = time.perf_counter() - started
            self.stats.work_seconds += spent
            self.stats.tick_seconds_max = max(self.stats.tick_seconds_max, spent)
            self.stats.cpu_seconds = time.thread_time() - cpu0

    def _take(self, kind: str) -> list[tuple[_Input, list[EncodedFrame]]]:
        with self._lock:
            out = []
            for inp in self._inputs.values():
                q = inp.video if kind == "video" else inp.audio
                out.append((inp, list(q)))
                q.clear()
            return out

    def _audio_tick(
        self, mixer: AudioMixer, minus: MixMinus, opus: OpusEncoder | None, timestamp: int
    ) -> None:
        blocks: dict[str, Samples] = {}
        inputs: list[_Input] = []
        for inp, frames in self._take("audio"):
            if inp.audio_decoder is None:
                inp.audio_decoder = AudioDecoder()
            for f in frames:
                inp.buffer.push(inp.audio_decoder.decode(f.data))
            blocks[inp.anchor_id] = inp.buffer.pop(AUDIO_FRAME)
            inputs.append(inp)
        controls = self._controls()
        if opus is not None:
            mixed = mixer.mix(blocks, controls) if blocks else np.zeros(AUDIO_FRAME, np.float32)
            for packet in opus.encode(mixed):
                self._emit(None, self._opus_frame(timestamp, packet))
        emit = self._emit_mixminus
        if emit is None:
            return
        # each listened-to anchor's mix of everyone else, encoded once for that anchor
        listened = {inp.anchor_id: inp for inp in inputs if self._mixminus_wanted(inp.anchor_id)}
        for aid, block in minus.mix(blocks, controls, listened).items():
            inp = listened[aid]
            if inp.mixminus_encoder is None:
                inp.mixminus_encoder = OpusEncoder(self.audio_bitrate)
            for packet in inp.mixminus_encoder.encode(block):
                self.stats.mixminus_frames += 1
                emit(aid, self._opus_frame(timestamp, packet))

    def _opus_frame(self, timestamp: int, packet: bytes) -> EncodedFrame:
        return EncodedFrame("audio", "opus", timestamp, (packet,), packet, True, self._clock())

    def _video_tick(
        self, compositor: Compositor, encoders: dict[str, VideoEncoder], timestamp: int
    ) -> None:
        now = self._clock()
        spec = self._layout()
        pictures: dict[str, Picture] = {}
        order: list[str] = []
        c0 = time.thread_time()
        for inp, frames in self._take("video"):
            order.append(inp.anchor_id)
            for f in frames:
                if inp.decoder is None or inp.decoder.codec != f.codec.upper():
                    if not is_keyframe(f.codec, f.data):
                        continue
                    inp.decoder = VideoDecoder(f.codec)
                decoded = inp.decoder.decode(f.data)
                self.stats.decoded_frames += len(decoded)
                if decoded:
                    # unique across inputs: an anchor that leaves and comes back (a new
                    # _Input) never matches the compositor's scaled copy of its old picture
                    inp.picture = Picture(decoded[-1], next(self._serials))
                    inp.last_picture_at = now
            if inp.picture is not None:
                since = inp.last_picture_at or inp.added_at
                inp.picture.stale = now - since > spec.placeholder_after
                pictures[inp.anchor_id] = inp.picture
        c1 = time.thread_time()
        self.stats.decode_cpu_seconds += c1 - c0
        wanted = [r for r in self.renditions if self._rendition_wanted(r.name)]
        resumed = {r.name for r in wanted} & self._unwatched
        self._unwatched = {r.name for r in self.renditions} - {r.name for r in wanted}
        self.stats.unwatched_frames += len(self._unwatched)
        if not wanted:
            return
        main = self.renditions[0]
        layout_key = (spec, tuple(order))
        if layout_key != self._tiles_key:
            self._tiles = compute_layout(spec, order, main.width, main.height)
            self._tiles_key = layout_key
        frame = compositor.compose(self._tiles, pictures, spec.background, spec.empty)
        self.stats.composite_cpu_seconds += time.thread_time() - c1
        with self._lock:
            keyframes = self._keyframes & {r.name for r in wanted}
            self._keyframes -= keyframes
        keyframes |= resumed
        enc_cpu = self.stats.encode_cpu_seconds
        for r in wanted:
            enc = encoders[r.name]
            c0 = time.thread_time()
            encoded = enc.encode(frame, r.name in keyframes)
            enc_cpu[r.name] = enc_cpu.get(r.name, 0.0) + time.thread_time() - c0
            for data, key in encoded:
                payloads = tuple(enc.packetize(data))
                self.stats.encoded_frames += 1
                self.stats.keyframes += key
                self._emit(
                    r.name,
                    EncodedFrame("video", enc.codec, timestamp, payloads, data, key, self._clock()),
                )
