"""Operator API for co-hosting stages: the layout, per-anchor audio (gain, mute), the program's
state (passthrough or mixed)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay.errors import NotFound, Unprocessable

from .mixer.layout import LayoutSpec, Region, format_colour, parse_colour
from .mixer.specs import AudioControl
from .stage.room import RoomService
from .stage.table import Stage, StageTable

COLOUR = r"^#[0-9a-fA-F]{6}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegionBody(_Body):
    anchor_id: str = Field(min_length=1, max_length=64)
    x: float = Field(ge=0, le=1)
    y: float = Field(ge=0, le=1)
    w: float = Field(gt=0, le=1)
    h: float = Field(gt=0, le=1)
    z: int = Field(0, ge=-100, le=100)


class LayoutBody(_Body):
    """``grid`` (default), ``speaker`` (one large + a strip), ``pip`` (one full + insets) or
    ``custom`` (``regions``: fractions of the canvas and a z-order per anchor)."""

    mode: Literal["grid", "speaker", "pip", "custom"] = "grid"
    speaker: str | None = Field(None, max_length=64)
    regions: list[RegionBody] = Field(default_factory=list, max_length=50)
    background: str | None = Field(None, pattern=COLOUR)
    empty: str | None = Field(None, pattern=COLOUR)
    placeholder_after: float | None = Field(None, gt=0, le=60)

    @model_validator(mode="after")
    def _check(self) -> LayoutBody:
        if self.mode == "custom" and not self.regions:
            raise ValueError("a custom layout needs regions")
        for r in self.regions:
            if r.x + r.w > 1.0001 or r.y + r.h > 1.0001:
                raise ValueError(f"region of {r.anchor_id} leaves the canvas")
        return self


class LayoutView(BaseModel):
    mode: str
    speaker: str | None
    regions: list[RegionBody]
    background: str
    empty: str
    placeholder_after: float


class AudioBody(_Body):
    gain: float | None = Field(None, ge=0, le=4)
    muted: bool | None = None


class AudioView(BaseModel):
    anchor_id: str
    gain: float
    muted: bool


class ProgramView(BaseModel):
    room: str
    live: bool
    mode: str
    anchors: list[str]
    renditions: list[str]
    switches: int
    mixer_state: Literal["running", "restarting", "stopped"] = "stopped"  # restarting: died
    mixer_restarts: int = 0  # mixer threads restarted after dying, this program
    mixer_last_error: str | None = None
    mixminus_listeners: dict[str, int] = Field(default_factory=dict)  # anchor id -> pulls
    mixer_mixminus_frames: int = 0
    mixer_video_ticks: int = 0
    mixer_late_ticks: int = 0
    mixer_skipped_ticks: int = 0
    mixer_work_seconds: float = 0.0
    mixer_cpu_seconds: float = 0.0
    mixer_encode_cpu_seconds: dict[str, float] = Field(default_factory=dict)
    mixer_decode_cpu_seconds: float = 0.0  # every anchor's video decode
    mixer_composite_cpu_seconds: float = 0.0
    mixer_audio_cpu_seconds: float = 0.0
    mixer_decoded_frames: int = 0
    mixer_keyframes: int = 0  # encoded, every rendition


def layout_view(spec: LayoutSpec) -> LayoutView:
    return LayoutView(
        mode=spec.mode,
        speaker=spec.speaker,
        regions=[
            RegionBody(anchor_id=a, x=r.x, y=r.y, w=r.w, h=r.h, z=r.z) for a, r in spec.regions
        ],
        background=format_colour(spec.background),
        empty=format_colour(spec.empty),
        placeholder_after=spec.placeholder_after,
    )


def layout_router(stages: StageTable, rooms: RoomService) -> APIRouter:
    router = APIRouter(tags=["stage"])

    def stage_or_404(room: str) -> Stage:
        stage = stages.get(room)
        if stage is None:
            raise NotFound(f"no room {room!r}")
        return stage

    @router.get("/rooms/{room}/layout", response_model=LayoutView)
    async def get_layout(room: str) -> LayoutView:
        return layout_view(stage_or_404(room).layout or rooms.default_layout)

    @router.put("/rooms/{room}/layout", response_model=LayoutView)
    async def put_layout(room: str, body: LayoutBody) -> LayoutView:
        """Takes effect at the mixer's next output frame; a lone anchor passed through is not
        drawn, so the layout shows once a second anchor joins."""
        stage = stage_or_404(room)
        base = rooms.default_layout
        spec = LayoutSpec(
            mode=body.mode,
            speaker=body.speaker,
            regions=tuple((r.anchor_id, Region(r.x, r.y, r.w, r.h, r.z)) for r in body.regions),
            background=parse_colour(body.background) if body.background else base.background,
            empty=parse_colour(body.empty) if body.empty else base.empty,
            placeholder_after=body.placeholder_after or base.placeholder_after,
        )
        stage.layout = spec
        return layout_view(spec)

    @router.post("/rooms/{room}/anchors/{anchor_id}/audio", response_model=AudioView)
    async def set_audio(room: str, anchor_id: str, body: AudioBody) -> AudioView:
        """Gain (linear, 0-4) and mute of one anchor in the program's mix (a limiter keeps the
        sum from clipping). A lone anchor passed through honours mute, not gain."""
        stage = stage_or_404(room)
        rooms.anchor(room, anchor_id)
        if body.gain is None and body.muted is None:
            raise Unprocessable("give gain, muted or both")
        old = stage.audio.get(anchor_id, AudioControl())
        ctl = AudioControl(
            gain=old.gain if body.gain is None else body.gain,
            muted=old.muted if body.muted is None else body.muted,
        )
        stage.audio = {**stage.audio, anchor_id: ctl}  # a new dict: the mixer thread reads it
        return AudioView(anchor_id=anchor_id, gain=ctl.gain, muted=ctl.muted)

    @router.get("/rooms/{room}/program", response_model=ProgramView)
    async def get_program(room: str) -> ProgramView:
        """What feeds the room's program now: ``idle``, ``passthrough`` or ``mixed``; the mixer
        thread's state (``running``, ``restarting`` after it died, ``stopped``) and restarts;
        who pulls each anchor's mix-minus."""
        stage = stage_or_404(room)
        director = rooms.directors.get(room)
        view = ProgramView(
            room=room,
            live=stage.hub is not None and not stage.hub.closed.is_set(),
            mode=director.mode if director is not None else "idle",
            anchors=list(stage.anchor_ids),
            renditions=list(stage.renditions),
            switches=director.switches if director is not None else 0,
        )
        if director is not None:
            view.mixer_state = director.mixer_state
            view.mixer_restarts = director.restarts
            view.mixer_last_error = director.last_error
            view.mixminus_listeners = {a: h.viewer_count for a, h in director.mixminus.items()}
        worker = director.worker if director is not None else None
        if worker is not None:
            st = worker.stats
            view.mixer_video_ticks = st.video_ticks
            view.mixer_late_ticks = st.late_ticks
            view.mixer_skipped_ticks = st.skipped_ticks
            view.mixer_work_seconds = round(st.work_seconds, 3)
            view.mixer_cpu_seconds = round(st.cpu_seconds, 3)
            view.mixer_mixminus_frames = st.mixminus_frames
            view.mixer_encode_cpu_seconds = {
                k: round(v, 3) for k, v in dict(st.encode_cpu_seconds).items()
            }
            view.mixer_decode_cpu_seconds = round(st.decode_cpu_seconds, 3)
            view.mixer_composite_cpu_seconds = round(st.composite_cpu_seconds, 3)
            view.mixer_audio_cpu_seconds = round(st.audio_cpu_seconds, 3)
            view.mixer_decoded_frames = st.decoded_frames
            view.mixer_keyframes = st.keyframes
        return view

    return router
