"""The one settings object: relay's node settings (``relay.server.settings``: what an edge
reads too) plus the origin's keys. Defaults < TOML file < ``STAGECAST_*`` environment; unknown
keys fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relay.server import settings as node
from relay.server.settings import (
    CONFIG_ENV,
    ApiSettings,
    AuthSettings,
    ClusterSettings,
    MetricsSettings,
    NodeSettings,
    TurnSettings,
    channel_config,
    ephemeral_secret,
    ice_directory,
    load_settings_as,
    node_ice,
    transport_config,
)

__all__ = [
    "CONFIG_ENV",
    "ApiSettings",
    "AuthSettings",
    "ClusterSettings",
    "MetricsSettings",
    "Settings",
    "TurnSettings",
    "channel_config",
    "ephemeral_secret",
    "ice_directory",
    "load_settings",
    "node_ice",
    "transport_config",
]


class MediaSettings(node.MediaSettings):
    video_codecs: tuple[str, ...] = ("H264", "VP8")
    """Codecs an anchor may publish, most preferred first (H264 lets the CDN bridge copy)."""
    anchor_start_kbps: int = Field(1200, ge=0, le=20000)
    """Where a browser anchor's bandwidth estimate starts (x-google-start-bitrate in the WHIP
    answer); its default, 300 kbps, makes a 720p camera send 360p for its first ~10 s. 0: off."""
    anchor_transport_cc: bool = True
    """Answer a browser anchor's transport-wide congestion control (the header extension and
    ``transport-cc`` feedback) and send it that feedback from the ingest tap every
    ``anchor_feedback_interval``: its own congestion control then ramps to its configured
    bitrate within seconds and backs off on a thin uplink. Clients that do not offer it (ffmpeg,
    OBS) keep aiortc's REMB. false: REMB for everyone."""
    anchor_cc_start_kbps: int = Field(2500, ge=0, le=20000)
    """``anchor_start_kbps`` for an anchor that negotiated transport-cc: its congestion control
    backs off within a second on a thinner uplink, so it can start at the publish page's 720p
    rate (with 1200 a 720p camera took 6-8 s to send 720p, with 2500 ~4 s). 0: the same."""
    anchor_feedback_interval: float = Field(0.05, ge=0.01, le=0.5)
    """Seconds between transport-cc feedback packets (libwebrtc's receiver: 50-250 ms; one is
    also sent after every 100 packets)."""
    anchor_nack_tries: int = Field(4, ge=1, le=10)
    """Times a packet an anchor's video lost is asked for (RTCP NACK): when its gap appears,
    then after a round trip (at least 20 ms), each further time after twice the wait before,
    until it arrives or its frame is skipped
    (``reassembly_wait``). 1: aiortc's own NACKs, once per gap (a lost retransmission is then
    never asked for again)."""
    anchor_repair_wait_max: float = Field(0.3, ge=0, le=2)
    """The most a hole in an anchor's video may hold it while its retransmission is awaited
    (s; with ``anchor_nack_tries`` > 1): the wait follows the anchor's measured repair times
    (gap seen -> missing packet arrived; smoothed + 4 deviations), from ``reassembly_wait`` up to
    this. Behind a thin uplink a retransmission crosses the full bottleneck queue and the
    browser's pacer and comes after 0.1 s; skipping the frame then costs a keyframe. Only frames
    behind a hole wait (a clean leg pays nothing). 0 or below ``reassembly_wait``: fixed
    ``reassembly_wait``."""
    anchor_opus_dtx: bool = True
    """Ask anchors for Opus DTX (``usedtx=1`` in the WHIP answer): a silent anchor sends a packet
    every 400 ms instead of every 20 ms, and so does the gateway to each viewer."""


class SessionSettings(node.SessionSettings):
    anchor_media_timeout: float = Field(5.0, gt=0)
    """An anchor that sends no media for this long is treated as gone."""
    reconnect_grace: float = Field(10.0, ge=0)
    """After an anchor's network drops, viewers keep their connection this long for it to
    publish again (same program, continuous timestamps). DELETE and kicks end at once. 0: off."""


class RoomSettings(node.RoomSettings):
    auto_create: bool = True
    """A WHIP push to an unknown room creates it; false: rooms must be created through the API."""


class BridgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ffmpeg: str = ""
    """ffmpeg binary the CDN bridges run; empty: the one in the ``imageio-ffmpeg`` wheel."""
    hls_dir: str = ""
    """Where HLS is written (one directory per room); empty: a temporary directory per process."""
    keyframe_interval: float = Field(1.0, ge=0.5, le=10)
    """Bridges ask the anchor for a keyframe this often (s); HLS segments start at keyframes, so
    this is also the HLS segment duration."""
    hls_part_duration: float = Field(0.3, ge=0.1, le=2)
    """LL-HLS part target (s)."""
    hls_window: int = Field(6, ge=3, le=1000)
    """Segments listed in the HLS playlist (older files are deleted)."""
    backoff_initial: float = Field(0.5, gt=0)
    """First restart delay (s) of a bridge whose ffmpeg died; doubles per failure."""
    backoff_max: float = Field(15.0, gt=0)
    retry_limit: int = Field(10, ge=0)
    """Consecutive failures before a bridge is marked failed (0: retry forever)."""
    stop_timeout: float = Field(3.0, gt=0)
    """How long ffmpeg may take to finish after end of input before it is terminated (then
    killed)."""
    queue_frames: int = Field(90, ge=4, le=10000)
    """Frames queued for ffmpeg; when it falls behind the bridge drops to the next keyframe."""
    video_bitrate_kbps: int = Field(2500, ge=100)
    """H264 bitrate when the program is VP8 and has to be transcoded."""
    audio_bitrate_kbps: int = Field(128, ge=16)
    max_per_room: int = Field(4, ge=1)


class RecordingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: str = ""
    """Where recordings are written (flat: ID.mp4 + ID.json); empty: a temporary directory per
    process (gone at exit)."""
    min_free_mb: int = Field(512, ge=0)
    """Free space the recordings' disk needs for a recording to start; below: 507."""
    stop_free_mb: int = Field(256, ge=0)
    """A running recording is stopped (file closed, playable) when free space falls below this."""
    keyframe_interval: float = Field(4.0, ge=0, le=60)
    """Ask the anchor for a keyframe this often while recording (s): a fragment and VOD segment
    can start only at a keyframe. 0: never ask (browsers may send one per minute or fewer)."""
    fragment_duration: float = Field(1.0, ge=0.1, le=10)
    """A fragment is written at least this often (s): what a crash or a full disk can lose."""
    queue_frames: int = Field(300, ge=4, le=10000)
    """Frames queued for the file writer; when it falls behind it drops to the next keyframe."""
    check_interval: float = Field(1.0, gt=0, le=60)
    """How often (s) a recording checks the disk's free space."""

    @model_validator(mode="after")
    def _stop_below_start(self) -> RecordingSettings:
        if self.stop_free_mb > self.min_free_mb:
            raise ValueError("recording.stop_free_mb must not exceed recording.min_free_mb")
        return self


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: tuple[str, ...] = ()
    """Endpoints that receive signed JSON events (anchor.joined/left, stream.started/ended, ...)."""
    secret: str = ""
    """HMAC key for the X-Stagecast-Signature header; empty: the token secret is used."""
    timeout: float = Field(5.0, gt=0)
    max_attempts: int = Field(5, ge=1, le=20)
    backoff_base: float = Field(0.5, gt=0)


class RenditionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")
    """What viewers ask for: ``/whep/ROOM?rendition=NAME``."""
    width: int = Field(ge=64, le=3840, multiple_of=2)
    height: int = Field(ge=64, le=2160, multiple_of=2)
    video_bitrate_kbps: int = Field(ge=50, le=20000)


class StageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_anchors: int = Field(9, ge=1, le=50)
    """Anchors a room (stage) takes at once; one more gets 409. 1: co-hosting off."""
    fps: int = Field(30, ge=5, le=60)
    """Output clock of the mixed program (frames per second)."""
    renditions: tuple[RenditionSettings, ...] = Field(
        (
            RenditionSettings(name="720p", width=1280, height=720, video_bitrate_kbps=2000),
            RenditionSettings(name="360p", width=640, height=360, video_bitrate_kbps=600),
        ),
        min_length=1,
        max_length=4,
    )
    """The mixer's ladder, each encoded once; the first is the default program (``/whep/ROOM``),
    the others are picked with ``?rendition=NAME``."""
    audio_bitrate_kbps: int = Field(64, ge=8, le=510)
    """Opus bitrate of the mixed audio."""
    keyframe_interval: float = Field(2.0, ge=0.5, le=10)
    """GOP of the mixer's encoders (s); viewers' PLIs force a keyframe sooner."""
    placeholder_after: float = Field(2.0, gt=0, le=60)
    """An anchor whose picture stalls this long shows a placeholder (before: frozen tile)."""
    background: str = Field("#101010", pattern=r"^#[0-9a-fA-F]{6}$")
    """Canvas colour behind the tiles (a layout may set its own)."""
    input_queue_frames: int = Field(30, ge=2, le=1000)
    """Encoded frames queued per anchor for the mixer; beyond: drop to the next keyframe."""
    mix_minus: bool = True
    """Each anchor of a mixed stage gets an Opus feed of everyone else's audio, pulled with
    ``/whep/ROOM?mixminus=ID`` and the anchor's own token (encoded only while pulled)."""
    guest_token_ttl: float = Field(120.0, ge=10, le=3600)
    """Lifetime of the anchor token an approved stage request gets (``/rooms/ROOM/stage``): the
    guest must publish within it; it is revoked when the guest leaves or is removed."""
    max_stage_requests: int = Field(50, ge=1, le=10_000)
    """Open stage requests (pending, approved, on stage) a room holds; one more gets 429."""
    fallback_hold: float = Field(20.0, gt=0, le=3600)
    """A viewer moved down the ladder, with no bandwidth estimate of its link (receiver reports
    only), is tried one rendition up after this many quiet seconds (doubling, up to 2 min, each
    time it falls right back). With an estimate the layer selector climbs when the estimate has
    held 1.3 x the next layer's bitrate for 3 s (``relay.media.layer_selector``)."""
    transcode_ladder: bool = False
    """A lone anchor sending one stream (no simulcast) still gets the lower renditions: its
    video decoded once and encoded at each rendition below the first in a thread of its own
    (the first stays passed through). Costs CPU per such room (see README)."""


class Settings(NodeSettings):
    media: MediaSettings = MediaSettings()
    sessions: SessionSettings = SessionSettings()
    rooms: RoomSettings = RoomSettings()
    limits: node.LimitSettings = node.LimitSettings()
    webhooks: WebhookSettings = WebhookSettings()
    bridge: BridgeSettings = BridgeSettings()
    recording: RecordingSettings = RecordingSettings()
    stage: StageSettings = StageSettings()


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (or $STAGECAST_CONFIG), then the environment, then ``overrides``."""
    return load_settings_as(Settings, config, **overrides)
