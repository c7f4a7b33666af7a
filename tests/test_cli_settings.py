from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from gateway.launcher import free_port, wait_healthy
from gateway.settings import Settings, load_settings
from relay.tokens import TokenAuthority

ROOT = Path(__file__).resolve().parents[1]


def test_sample_config_loads_and_matches_defaults() -> None:
    loaded = load_settings(ROOT / "config" / "stagecast.toml")
    assert loaded.model_dump() == Settings().model_dump()


def test_unknown_keys_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("porrt = 1\n")
    with pytest.raises(ValidationError):
        load_settings(bad)
    with pytest.raises(ValidationError):
        Settings(media={"nope": 1})


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text("port = 9001\n[media]\nkeyframe_interval = 0.5\n")
    monkeypatch.setenv("STAGECAST_PORT", "9002")
    s = load_settings(cfg)
    assert s.port == 9002 and s.media.keyframe_interval == 0.5


def test_token_command(tmp_path: Path) -> None:
    env = {**os.environ, "STAGECAST_AUTH__TOKEN_SECRET": "k" * 40}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "token",
            "--room",
            "r",
            "--role",
            "audience",
            "--ttl",
            "60",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    claims = TokenAuthority("k" * 40).verify(out.stdout.strip(), room="r", role="audience")
    assert claims.subject == "cli"
    env.pop("STAGECAST_AUTH__TOKEN_SECRET")
    fail = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "token", "--room", "r", "--role", "anchor"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert fail.returncode == 2 and "token_secret" in fail.stderr


def test_serve_prints_urls_and_serves() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "API docs" in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}/whip/demo" in text
        assert f"http://127.0.0.1:{port}/whep/demo" in text
        assert re.search(r"anchor token: \S+\.\S+\.\S+", text)
        wait_healthy(f"http://127.0.0.1:{port}")
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(15) in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
