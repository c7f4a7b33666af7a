"""The one settings object: defaults < TOML file < ``STAGECAST_*`` environment; unknown keys
fail."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "STAGECAST_CONFIG"


class MediaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    video_codecs: tuple[str, ...] = ("H264", "VP8")
    """Codecs an anchor may publish, most preferred first (H264 lets the CDN bridge copy)."""
    keyframe_interval: float = Field(0.25, gt=0, le=5)
    """Upstream keyframe requests (joins, PLIs) are coalesced to one per this many seconds."""
    video_queue_frames: int = Field(60, ge=2, le=1000)
    """Per-viewer video queue; on overflow the viewer drops to the next keyframe."""
    audio_queue_frames: int = Field(100, ge=2, le=1000)
    reassembly_wait: float = Field(0.1, gt=0, le=2)
    """How long a missing packet may hold back later frames before they are skipped."""


class SessionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout: float = Field(15.0, gt=0)
    """A peer that has not connected after this many seconds is dropped."""
    anchor_media_timeout: float = Field(5.0, gt=0)
    """An anchor that sends no media for this long is treated as gone."""
    reconnect_grace: float = Field(10.0, ge=0)
    """After an anchor's network drops, viewers keep their connection this long for it to
    publish again (same program, continuous timestamps). DELETE and kicks end at once. 0: off."""
    max_sdp_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    retry_after: int = Field(2, ge=1)


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token_secret: str = ""
    """HMAC secret for tokens (>= 32 bytes). Empty: a random one per process (single node only)."""
    anonymous_audience: bool = True
    """Let viewers pull without a token (rooms can still be private once the API says so)."""
    token_ttl: int = Field(3600, gt=0)


class RoomSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    auto_create: bool = True
    """A WHIP push to an unknown room creates it; false: rooms must be created through the API."""
    max_viewers_per_node: int | None = Field(None, ge=1)
    """Viewers this node serves at most; beyond: 503 + Retry-After. None: no limit."""


class LimitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    """Largest request body of any kind (JSON, SDP); bigger: 413."""
    session_posts_per_second: float = Field(5.0, gt=0)
    """WHIP/WHEP POSTs a client address may make per second, sustained; beyond: 429."""
    session_post_burst: int = Field(20, ge=1)


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


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: tuple[str, ...] = ()
    """Endpoints that receive signed JSON events (anchor.joined/left, stream.started/ended, ...)."""
    secret: str = ""
    """HMAC key for the X-Stagecast-Signature header; empty: the token secret is used."""
    timeout: float = Field(5.0, gt=0)
    max_attempts: int = Field(5, ge=1, le=20)
    backoff_base: float = Field(0.5, gt=0)


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    operator_key: str = ""
    """Key for the operator API (``Authorization: Bearer KEY`` or ``X-API-Key``). Empty: a random
    one per process, printed at start."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STAGECAST_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = ""
    """Base URL printed and handed to clients; default http://HOST:PORT."""
    ice_servers: tuple[str, ...] = ()
    """STUN/TURN URLs for peers; empty means host candidates only."""
    cors_origin: str = "*"
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """json: one JSON object per line with room/session ids, for log collectors."""
    media: MediaSettings = MediaSettings()
    sessions: SessionSettings = SessionSettings()
    auth: AuthSettings = AuthSettings()
    api: ApiSettings = ApiSettings()
    rooms: RoomSettings = RoomSettings()
    limits: LimitSettings = LimitSettings()
    webhooks: WebhookSettings = WebhookSettings()
    bridge: BridgeSettings = BridgeSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (or $STAGECAST_CONFIG), then the environment, then ``overrides``."""
    path: Path | str | None = config or os.environ.get(CONFIG_ENV)
    if not path:
        return Settings(**overrides)
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {file} does not exist")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": file})

    return FileSettings(**overrides)


def ephemeral_secret() -> str:
    """A per-process token secret for a single node started without one."""
    return secrets.token_urlsafe(48)
